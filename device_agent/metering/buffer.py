"""The durable usage buffer: one SQLite file in the agent's state directory.

``state_dir/metering.sqlite3`` (WAL journal, ``PRAGMA synchronous=FULL``, mode
0600) holds every usage record from the moment :meth:`UsageBuffer.append`
returns until the hub acknowledges it. One ``BEGIN IMMEDIATE`` transaction
mints the key, advances the persisted sequence counter, updates the meter's
period counter and inserts the record, so after a crash either all of it is
there or none of it: a key is never handed out twice, a committed record is
never lost. Several connections (the agent, the application's threads or
processes, the ``device-agent meter`` command) may use the file at once;
SQLite serialises the writers.

Tables::

    meta(name, value)           format, boot_epoch, seq (last minted), max_records,
                                pending, dropped, cap_refused, discarded, acknowledged
    records(boot_epoch, seq, meter, quantity, ts, dim)   primary key (boot_epoch, seq)
    periods(meter, period, period_start, used, over)     per-meter cap counters (decimal text)
    ack_codes(code, count)      records deleted per hub answer code

Bound: at most ``max_records`` unacknowledged records (default 100,000, about
10 MB). When full, :meth:`UsageBuffer.append` refuses the record, adds one to
the persisted ``dropped`` counter and raises :class:`BufferFull`: nothing is
lost silently, and a refused record never gets a key.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from device_agent.errors import StateError
from device_agent.metering.errors import BufferFull, CapExceeded, UsageRefused
from protocols.errors import MessageError
from protocols.manifest import OveragePolicy, Period
from protocols.usage_messages import AckResult, RawUsageRecord, UsageRecord, parse_record

log = logging.getLogger(__name__)

BUFFER_FILE = "metering.sqlite3"
FORMAT = 1
DEFAULT_MAX_RECORDS = 100_000
MAX_MAX_RECORDS = 10_000_000
_SQLITE_INT_MAX = 2**63 - 1
_COUNTERS = ("pending", "dropped", "cap_refused", "discarded", "acknowledged")

Key = tuple[int, int]

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID",
    # quantity has no declared type, so SQLite keeps ints as INTEGER and floats as REAL.
    "CREATE TABLE IF NOT EXISTS records (boot_epoch INTEGER NOT NULL, seq INTEGER NOT NULL,"
    " meter TEXT NOT NULL, quantity NOT NULL, ts INTEGER NOT NULL, dim TEXT,"
    " PRIMARY KEY (boot_epoch, seq)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS periods (meter TEXT PRIMARY KEY, period TEXT NOT NULL,"
    " period_start INTEGER NOT NULL, used TEXT NOT NULL, over TEXT NOT NULL) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS ack_codes (code TEXT PRIMARY KEY, count INTEGER NOT NULL)"
    " WITHOUT ROWID",
)


@dataclass(frozen=True, slots=True)
class CapRule:
    """A metered feature's cap as the manifest states it, for the current period."""

    period: Period
    period_start: int
    cap: int
    overage: OveragePolicy


@dataclass(frozen=True, slots=True)
class Appended:
    """A record the buffer now holds, and where its meter stands against its cap.

    Attributes:
        record: The stored record with its freshly minted key.
        used: Units used in the current period including this record (``None``: no cap).
        over_cap: The record took the period beyond its cap (``allow``/``flag`` policy).
    """

    record: UsageRecord
    used: Decimal | None = None
    over_cap: bool = False


@dataclass(frozen=True, slots=True)
class AckOutcome:
    """What one acknowledgement did: records deleted per code, keys not held."""

    deleted: dict[str, int]
    unknown: int

    @property
    def deleted_total(self) -> int:
        """Records deleted."""
        return sum(self.deleted.values())


@dataclass(frozen=True, slots=True)
class PeriodUsage:
    """A meter's counted usage in its current cap period."""

    meter: str
    period: str
    period_start: int
    used: Decimal
    over: Decimal


@dataclass(frozen=True, slots=True)
class BufferStats:
    """Counters of the buffer (see the module docstring)."""

    pending: int
    dropped: int
    cap_refused: int
    discarded: int
    acknowledged: int
    boot_epoch: int
    last_seq: int
    max_records: int
    oldest_ts: int | None
    codes: dict[str, int] = field(default_factory=dict)
    periods: tuple[PeriodUsage, ...] = ()


class UsageBuffer:
    """One connection to the usage buffer file; safe to share between threads."""

    def __init__(self, db: sqlite3.Connection, path: Path) -> None:
        """Wrap an open connection; use :meth:`open`."""
        self._db = db
        self.path = path
        self._lock = threading.RLock()

    @classmethod
    def open(
        cls, path: Path, *, max_records: int | None = None, timeout: float = 10.0
    ) -> UsageBuffer:
        """Open (creating if needed) the buffer at ``path``.

        Args:
            path: The SQLite file (``state_dir / BUFFER_FILE``).
            max_records: The bound to enforce and persist; ``None`` keeps the
                stored one (default 100,000 for a new file).
            timeout: Seconds to wait for another writer's lock.

        Raises:
            StateError: the file cannot be opened, is not a usage buffer, or
                ``max_records`` is out of range.
        """
        if max_records is not None and not 1 <= max_records <= MAX_MAX_RECORDS:
            raise StateError(f"max_records must be 1..{MAX_MAX_RECORDS}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            os.close(fd)
            db = sqlite3.connect(
                path, timeout=timeout, isolation_level=None, check_same_thread=False
            )
        except (OSError, sqlite3.Error) as exc:
            raise StateError(f"cannot open usage buffer {path}: {exc}") from exc
        buffer = cls(db, path)
        try:
            buffer._prepare(max_records)
        except BaseException:
            db.close()
            raise
        return buffer

    def close(self) -> None:
        """Close the connection (an uncommitted transaction is rolled back)."""
        with self._lock:
            self._db.close()

    def begin_epoch(self, boot_epoch: int) -> int:
        """Start minting keys in ``boot_epoch`` (seq from 1) if it is newer than the stored one.

        An epoch that is not newer (a reset boot counter) keeps the stored epoch
        and its sequence going, so keys only ever grow and are never reused.

        Returns:
            The epoch the buffer mints in from now on.
        """
        with self._write() as db:
            stored = _meta(db, "boot_epoch")
            if boot_epoch > stored:
                _set_meta(db, boot_epoch=boot_epoch, seq=0)
                return boot_epoch
        if boot_epoch < stored:
            log.warning(
                "boot epoch %d is older than the buffer's %d; keeping it", boot_epoch, stored
            )
        return stored

    def append(
        self,
        meter: str,
        quantity: int | float,
        *,
        ts: int,
        dim: str | None = None,
        rule: CapRule | None = None,
    ) -> Appended:
        """Mint the next key and store the record durably, or refuse it.

        The caller has validated ``meter``, ``quantity`` and ``dim`` (the
        :class:`~device_agent.metering.meter.Meter` does).

        Raises:
            CapExceeded: ``rule`` blocks it; counted in ``cap_refused``.
            BufferFull: the bound is reached; counted in ``dropped``.
            StateError: the database could not be written; nothing was stored.
        """
        with self._write() as db:
            period, refusal = _apply_cap(db, meter, Decimal(str(quantity)), rule)
            if refusal is None and _meta(db, "pending") >= _meta(db, "max_records"):
                refusal = BufferFull(_meta(db, "max_records"), _meta(db, "dropped") + 1)
            if refusal is not None:
                _bump(db, "dropped" if isinstance(refusal, BufferFull) else "cap_refused")
            else:
                record = _insert(db, meter, quantity, ts, dim)
                if rule is not None and period is not None:
                    _save_period(db, meter, rule.period, period)
        if refusal is not None:
            log.warning("usage refused: %s", refusal)
            raise refusal
        if rule is None or period is None:
            return Appended(record)
        return Appended(record, period.used, period.used > rule.cap)

    def pending(self, *, start: Key | None = None, limit: int = 1000) -> list[UsageRecord]:
        """Up to ``limit`` unacknowledged records, oldest first, with key ``>= start``."""
        low = start or (0, 0)
        rows = self._read(
            "SELECT boot_epoch, seq, meter, quantity, ts, dim FROM records"
            " WHERE (boot_epoch, seq) >= (?, ?) ORDER BY boot_epoch, seq LIMIT ?",
            (*low, limit),
        )
        return self._records(rows)

    def records(self, keys: Iterable[Key]) -> list[UsageRecord]:
        """The records still held among ``keys``, oldest first."""
        rows: list[Any] = []
        with self._lock:
            for key in sorted(set(keys)):
                rows.extend(
                    self._read(
                        "SELECT boot_epoch, seq, meter, quantity, ts, dim FROM records"
                        " WHERE boot_epoch = ? AND seq = ?",
                        key,
                    )
                )
        return self._records(rows)

    def acknowledge(self, results: Iterable[AckResult]) -> AckOutcome:
        """Delete each answered record (any final code) and count it under its code.

        Keys the buffer does not hold (a duplicate ack, an ack for another
        boot, a forged one) change nothing and are only counted in ``unknown``.
        """
        deleted: dict[str, int] = {}
        unknown = 0
        with self._write() as db:
            for result in results:
                if not _holds(result.key):
                    unknown += 1
                    continue
                cursor = db.execute(
                    "DELETE FROM records WHERE boot_epoch = ? AND seq = ?", result.key
                )
                if cursor.rowcount == 0:
                    unknown += 1
                    continue
                deleted[result.code] = deleted.get(result.code, 0) + 1
            total = sum(deleted.values())
            if total:
                _bump(db, "pending", -total)
                _bump(db, "acknowledged", total)
                for code, count in deleted.items():
                    db.execute(
                        "INSERT INTO ack_codes (code, count) VALUES (?, ?) ON CONFLICT (code)"
                        " DO UPDATE SET count = count + excluded.count",
                        (code, count),
                    )
        return AckOutcome(deleted, unknown)

    def discard(self, keys: Iterable[Key]) -> int:
        """Delete records that can never be delivered; counted in ``discarded``."""
        removed = 0
        with self._write() as db:
            for key in keys:
                if _holds(key):
                    removed += db.execute(
                        "DELETE FROM records WHERE boot_epoch = ? AND seq = ?", key
                    ).rowcount
            if removed:
                _bump(db, "pending", -removed)
                _bump(db, "discarded", removed)
        return removed

    def stats(self) -> BufferStats:
        """The buffer's counters, the key position and each meter's period usage."""
        with self._lock:
            meta = dict(self._read("SELECT name, value FROM meta", ()))
            codes = dict(self._read("SELECT code, count FROM ack_codes ORDER BY code", ()))
            oldest = self._read("SELECT ts FROM records ORDER BY boot_epoch, seq LIMIT 1", ())
            periods = self._read(
                "SELECT meter, period, period_start, used, over FROM periods ORDER BY meter", ()
            )
        return BufferStats(
            pending=meta["pending"],
            dropped=meta["dropped"],
            cap_refused=meta["cap_refused"],
            discarded=meta["discarded"],
            acknowledged=meta["acknowledged"],
            boot_epoch=meta["boot_epoch"],
            last_seq=meta["seq"],
            max_records=meta["max_records"],
            oldest_ts=oldest[0][0] if oldest else None,
            codes=codes,
            periods=tuple(
                PeriodUsage(m, p, s, Decimal(u), Decimal(o)) for m, p, s, u, o in periods
            ),
        )

    def period_usage(self, meter: str) -> PeriodUsage | None:
        """The meter's counted usage in its current (last recorded) cap period."""
        return next((p for p in self.stats().periods if p.meter == meter), None)

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` transaction; database failures become StateError."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise StateError(f"usage buffer {self.path}: {exc}") from exc
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException as exc:
                self._rollback()
                if isinstance(exc, sqlite3.Error):
                    raise StateError(f"usage buffer {self.path}: {exc}") from exc
                raise

    def _rollback(self) -> None:
        try:
            self._db.execute("ROLLBACK")
        except sqlite3.Error:
            log.debug("rollback after a failed usage-buffer transaction failed too")

    def _read(self, sql: str, params: tuple[Any, ...]) -> list[Any]:
        with self._lock:
            try:
                return self._db.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise StateError(f"usage buffer {self.path}: {exc}") from exc

    def _records(self, rows: list[Any]) -> list[UsageRecord]:
        """Rows as validated records; a row that fails validation is discarded and logged."""
        good: list[UsageRecord] = []
        bad: list[Key] = []
        for epoch, seq, meter, quantity, ts, dim in rows:
            items = (
                (epoch, seq, meter, quantity, ts)
                if dim is None
                else (epoch, seq, meter, quantity, ts, dim)
            )
            try:
                good.append(parse_record(RawUsageRecord(items)))
            except MessageError as exc:
                log.error("discarding corrupt usage record %s/%s: %s", epoch, seq, exc)
                bad.append((epoch, seq))
        if bad:
            self.discard(bad)
        return good

    def _prepare(self, max_records: int | None) -> None:
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
        except sqlite3.Error as exc:
            raise StateError(f"usage buffer {self.path}: {exc}") from exc
        with self._write() as db:
            for statement in _SCHEMA:
                db.execute(statement)
            stored = db.execute("SELECT value FROM meta WHERE name = 'format'").fetchone()
            if stored is None:
                _set_meta(db, format=FORMAT, boot_epoch=0, seq=0, max_records=DEFAULT_MAX_RECORDS)
                _set_meta(db, **dict.fromkeys(_COUNTERS, 0))
            elif stored[0] != FORMAT:
                raise StateError(f"{self.path}: unknown usage buffer format {stored[0]}")
            if max_records is not None:
                _set_meta(db, max_records=max_records)
            (count,) = db.execute("SELECT COUNT(*) FROM records").fetchone()
            if count != _meta(db, "pending"):
                _set_meta(db, pending=count)


def _holds(key: Key) -> bool:
    """Whether ``key`` fits SQLite's signed 64-bit integers (larger ones are never stored)."""
    return all(0 <= part <= _SQLITE_INT_MAX for part in key)


def _meta(db: sqlite3.Connection, name: str) -> int:
    row = db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
    if row is None:
        raise StateError(f"usage buffer lacks its {name!r} counter")
    return int(row[0])


def _set_meta(db: sqlite3.Connection, **values: int) -> None:
    db.executemany(
        "INSERT INTO meta (name, value) VALUES (?, ?)"
        " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        list(values.items()),
    )


def _bump(db: sqlite3.Connection, name: str, by: int = 1) -> None:
    db.execute("UPDATE meta SET value = value + ? WHERE name = ?", (by, name))


def _insert(
    db: sqlite3.Connection, meter: str, quantity: int | float, ts: int, dim: str | None
) -> UsageRecord:
    epoch, seq = _meta(db, "boot_epoch"), _meta(db, "seq") + 1
    if seq > _SQLITE_INT_MAX:
        raise StateError("usage sequence exhausted in this boot epoch; restart the agent")
    db.execute(
        "INSERT INTO records (boot_epoch, seq, meter, quantity, ts, dim) VALUES (?, ?, ?, ?, ?, ?)",
        (epoch, seq, meter, quantity, ts, dim),
    )
    _set_meta(db, seq=seq)
    _bump(db, "pending")
    return UsageRecord(epoch, seq, meter, quantity, ts, dim)


@dataclass(frozen=True, slots=True)
class _Period:
    start: int
    used: Decimal
    over: Decimal


def _apply_cap(
    db: sqlite3.Connection, meter: str, quantity: Decimal, rule: CapRule | None
) -> tuple[_Period | None, UsageRefused | None]:
    """The meter's period after this record, or the refusal when ``rule`` blocks it."""
    if rule is None:
        return None, None
    row = db.execute(
        "SELECT period, period_start, used, over FROM periods WHERE meter = ?", (meter,)
    ).fetchone()
    held = _Period(rule.period_start, Decimal(0), Decimal(0))
    if row is not None and row[0] == rule.period and row[1] >= rule.period_start:
        # Same period, or the clock went back into an earlier one: keep counting.
        held = _Period(row[1], Decimal(row[2]), Decimal(row[3]))
    used = held.used + quantity
    if used > rule.cap and rule.overage == "block":
        return None, CapExceeded(meter, cap=rule.cap, used=held.used, period_start=held.start)
    over = held.over
    if rule.overage == "flag" and used > rule.cap:
        over += min(quantity, used - rule.cap)
    return _Period(held.start, used, over), None


def _save_period(db: sqlite3.Connection, meter: str, period: str, state: _Period) -> None:
    db.execute(
        "INSERT INTO periods (meter, period, period_start, used, over) VALUES (?, ?, ?, ?, ?)"
        " ON CONFLICT (meter) DO UPDATE SET period = excluded.period,"
        " period_start = excluded.period_start, used = excluded.used, over = excluded.over",
        (meter, period, state.start, str(state.used), str(state.over)),
    )


__all__ = [
    "BUFFER_FILE",
    "DEFAULT_MAX_RECORDS",
    "MAX_MAX_RECORDS",
    "AckOutcome",
    "Appended",
    "BufferStats",
    "CapRule",
    "PeriodUsage",
    "UsageBuffer",
]
