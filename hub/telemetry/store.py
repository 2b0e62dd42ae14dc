"""Bulk writes of the ingestion path, one ``executemany`` per table and batch.

The hot path inserts tens of thousands of rows per second. SQLAlchemy's
per-row parameter processing (time zones, the :class:`~hub.telemetry.models.Quantity`
type, compiled parameter construction) costs more than SQLite's own insert,
so these statements go to the driver directly (``exec_driver_sql``) inside
the session's transaction, with values already in the column's storage form:

- SQLite: timestamps as the naive UTC text SQLAlchemy writes
  (``YYYY-MM-DD HH:MM:SS.ffffff``), quantities as integer micro-units;
- PostgreSQL: aware datetimes and ``Decimal``.

``INSERT ... ON CONFLICT (...) DO NOTHING`` / ``DO UPDATE`` has the same
syntax on both backends. The values written here read back through the
models exactly as if the ORM had written them (tests compare both).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, TypeVar

from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from hub.db.base import Base
from hub.telemetry.models import SCALE

T = TypeVar("T")
_SECONDS_MEMO = 100_000
IN_CHUNK = 900
"""Values per ``IN (...)`` list: under SQLite's historical limit of 999 bound variables."""


def chunks(values: Sequence[T], size: int = IN_CHUNK) -> Iterator[Sequence[T]]:
    """``values`` in slices of at most ``size``."""
    for start in range(0, len(values), size):
        yield values[start : start + size]


class Writer:
    """Driver-level inserts on the session's connection (same transaction)."""

    def __init__(self, session: Session) -> None:
        self._connection: Connection = session.connection()
        self.sqlite = self._connection.dialect.name == "sqlite"
        self._placeholder = "?" if self.sqlite else "%s"
        self._greatest = "max" if self.sqlite else "GREATEST"
        self._stamps: dict[int, str] = {}  # day number -> YYYY-MM-DD
        # Unix second -> storage text: a batch's records share few seconds, and
        # formatting one costs more than the rest of its row (bounded below).
        self._seconds: dict[int, Any] = {}

    # ---------------------------------------------------------------- values

    def stamp(self, ts: int) -> Any:
        """A whole-second Unix time in the timestamp columns' storage form."""
        value = self._seconds.get(ts)
        if value is None:
            if len(self._seconds) >= _SECONDS_MEMO:
                self._seconds.clear()
            value = self._seconds[ts] = self._format(ts)
        return value

    def _format(self, ts: int) -> Any:
        if not self.sqlite:
            return datetime.fromtimestamp(ts, UTC)
        day, second = divmod(ts, 86_400)
        date = self._stamps.get(day)
        if date is None:
            date = self._stamps[day] = time.strftime("%Y-%m-%d", time.gmtime(day * 86_400))
        hour, rest = divmod(second, 3600)
        return f"{date} {hour:02d}:{rest // 60:02d}:{rest % 60:02d}.000000"

    def moment(self, value: datetime) -> Any:
        """Any aware datetime in the timestamp columns' storage form."""
        if self.sqlite:
            return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")
        return value

    def quantity(self, micro: int) -> Any:
        """A quantity given in micro-units, in the quantity columns' storage form."""
        if self.sqlite:
            return micro
        return Decimal(micro).scaleb(-SCALE)

    # ---------------------------------------------------------------- statements

    def _values(self, columns: Sequence[str]) -> str:
        return ", ".join([self._placeholder] * len(columns))

    @staticmethod
    def _check(table: str, *column_lists: Sequence[str]) -> None:
        """Only our own tables and columns ever reach the SQL text (no input does)."""
        known = Base.metadata.tables.get(table)
        names = {name for columns in column_lists for name in columns}
        if known is None or not names <= set(known.columns.keys()):
            raise ValueError(f"unknown table or columns: {table} {sorted(names)}")

    def insert(
        self,
        table: str,
        columns: Sequence[str],
        rows: Sequence[tuple[Any, ...]],
        *,
        conflict: Sequence[str] = (),
    ) -> int:
        """Insert ``rows``; with ``conflict`` columns, skip rows whose key exists.

        Returns:
            How many rows were inserted.
        """
        if not rows:
            return 0
        self._check(table, columns, conflict)
        tail = f" ON CONFLICT ({', '.join(conflict)}) DO NOTHING" if conflict else ""
        return self._execute(table, columns, rows, tail)

    def _execute(
        self, table: str, columns: Sequence[str], rows: Sequence[tuple[Any, ...]], tail: str
    ) -> int:
        """One ``executemany`` on SQLite; one ``unnest`` of arrays on PostgreSQL.

        PostgreSQL runs an ``executemany`` as one statement per row; sending
        each column as one array and inserting ``SELECT * FROM unnest(...)``
        is one statement with one parameter per column, whatever the row
        count. SQLite's ``executemany`` is a C loop over one prepared
        statement, already the fastest form there.
        """
        names = ", ".join(columns)
        if self.sqlite:
            sql = f"INSERT INTO {table} ({names}) VALUES ({self._values(columns)}){tail}"  # noqa: S608 - identifiers checked against the schema
            return int(self._connection.exec_driver_sql(sql, list(rows)).rowcount)
        arrays = ", ".join(f"%s::{self._array_type(table, c)}" for c in columns)
        sql = f"INSERT INTO {table} ({names}) SELECT * FROM unnest({arrays}){tail}"  # noqa: S608 - identifiers checked against the schema
        params = tuple(list(column) for column in zip(*rows, strict=True))
        return int(self._connection.exec_driver_sql(sql, params).rowcount)

    def _array_type(self, table: str, column: str) -> str:
        """The PostgreSQL array type of ``table.column`` (``BIGINT[]``, ``NUMERIC(24, 6)[]``)."""
        sql_type = Base.metadata.tables[table].columns[column].type
        return f"{sql_type.compile(dialect=self._connection.dialect)}[]"

    def upsert(
        self,
        table: str,
        columns: Sequence[str],
        rows: Sequence[tuple[Any, ...]],
        *,
        conflict: Sequence[str],
        add: Sequence[str] = (),
        greatest: Sequence[str] = (),
        replace: Sequence[str] = (),
    ) -> None:
        """Insert ``rows`` or, on a key clash, update the existing row.

        Args:
            table: the table.
            columns: the inserted columns, in the rows' order.
            rows: the values.
            conflict: the key columns.
            add: columns that become ``existing + new``.
            greatest: columns that become ``max(existing, new)``.
            replace: columns that become ``new``.
        """
        if not rows:
            return
        self._check(table, columns, conflict, add, greatest, replace)
        updates = [f"{c} = {table}.{c} + excluded.{c}" for c in add]
        updates += [f"{c} = {self._greatest}({table}.{c}, excluded.{c})" for c in greatest]
        updates += [f"{c} = excluded.{c}" for c in replace]
        tail = f" ON CONFLICT ({', '.join(conflict)}) DO UPDATE SET {', '.join(updates)}"
        self._execute(table, columns, rows, tail)
