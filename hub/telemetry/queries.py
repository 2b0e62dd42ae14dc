"""Reading stored usage: totals, aggregations, records, meters, leakage.

Pure functions of a ``Session`` and parameters; every one is tenant-scoped.
Billing reads usage only through this module (the tables are the ingestion
side's), so the semantics here are the contract:

- the time window is ``[start, end)`` on ``recorded_at`` (the device's clock),
  or on ``received_at`` (the hub's commit time) with ``by_received=True``;
- only ``usage_records`` count: quarantined, conflicting and rejected records
  never do;
- aggregations: ``sum`` of quantities, ``count`` of records, ``max`` quantity,
  ``unique_count`` of distinct non-null dimensions, ``latest``: the quantity
  of the record with the greatest ``recorded_at`` (ties: the greater ``seq``,
  then the later stored);
- values are exact ``Decimal`` (six decimals) on every backend.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Protocol

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Select,
    String,
    and_,
    func,
    literal,
    or_,
    select,
    type_coerce,
)
from sqlalchemy.orm import InstrumentedAttribute, Session

from hub.errors import ValidationFailed
from hub.telemetry.models import AGGREGATIONS, MICRO, SCALE, UsageRecord

GROUP_KEYS = ("account_id", "meter", "device_id", "product_id", "entitlement_id", "dimension")
PERIOD_KEYS = ("day", "month")
GROUP_BY_CHOICES = GROUP_KEYS + PERIOD_KEYS
ZERO = Decimal(0).scaleb(-SCALE)


@dataclass(frozen=True, slots=True)
class UsageTotal:
    """One group of an aggregation.

    Attributes:
        keys: the group's value for each ``group_by`` key (``day``: ``YYYY-MM-DD``,
            ``month``: ``YYYY-MM``, UTC; ``None`` for a null column).
        value: the aggregate (for ``count`` and ``unique_count``, a whole number).
        records: how many records the group holds.
    """

    keys: dict[str, str | None]
    value: Decimal
    records: int


@dataclass(frozen=True, slots=True)
class UsageRecordRow:
    """One stored usage record, as exports and the billing audit read it."""

    id: int
    tenant_id: str
    device_id: str
    boot_epoch: int
    seq: int
    meter: str
    quantity: Decimal
    dimension: str | None
    recorded_at: datetime
    received_at: datetime
    account_id: str | None
    product_id: str | None
    entitlement_id: str | None
    over_cap: bool


RECORD_FIELDS: tuple[str, ...] = tuple(UsageRecordRow.__dataclass_fields__)


class MeterLike(Protocol):
    """What :func:`evaluate_meter` needs of a meter (a :class:`~hub.telemetry.models.Meter`)."""

    @property
    def feature_key(self) -> str:
        """The metered feature's key (the records' ``meter``)."""
        ...

    @property
    def aggregation(self) -> str:
        """One of :data:`~hub.telemetry.models.AGGREGATIONS`."""
        ...


@dataclass(frozen=True, slots=True)
class RecordFilter:
    """Which records a query reads; ``None`` means "any"."""

    tenant_id: str
    start: datetime
    end: datetime
    account_id: str | None = None
    meter: str | None = None
    device_id: str | None = None
    by_received: bool = False
    covered: bool | None = None
    over_cap: bool | None = None

    def clauses(self) -> list[ColumnElement[bool]]:
        """The WHERE clauses of this filter."""
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise ValidationFailed("start and end must carry a time zone")
        if self.end < self.start:
            raise ValidationFailed("end is before start")
        column = UsageRecord.received_at if self.by_received else UsageRecord.recorded_at
        clauses = [UsageRecord.tenant_id == self.tenant_id, column >= self.start, column < self.end]
        for attribute, value in (
            (UsageRecord.account_id, self.account_id),
            (UsageRecord.meter, self.meter),
            (UsageRecord.device_id, self.device_id),
        ):
            if value is not None:
                clauses.append(attribute == value)
        if self.device_id is not None:
            # Always true (epochs are unsigned), but it lets the planner see
            # that the key index (device_id, boot_epoch, seq) narrows the
            # search to one device: without statistics SQLite otherwise
            # scans the whole tenant through the (tenant_id, ...) index.
            # There is no (tenant_id, device_id, recorded_at) index since
            # migration 0007_usage_ingest (it cost ingestion a page per record).
            clauses.append(UsageRecord.boot_epoch >= 0)
        if self.covered is not None:
            account = UsageRecord.account_id
            clauses.append(account.is_not(None) if self.covered else account.is_(None))
        if self.over_cap is not None:
            clauses.append(UsageRecord.over_cap.is_(self.over_cap))
        return clauses


def _dialect(session: Session) -> str:
    return session.get_bind().dialect.name


def _period_expr(name: str, dialect: str) -> ColumnElement[Any]:
    """``YYYY-MM-DD`` / ``YYYY-MM`` of ``recorded_at`` in UTC."""
    column = UsageRecord.recorded_at
    if dialect == "sqlite":  # stored as naive UTC text
        fmt = "%Y-%m-%d" if name == "day" else "%Y-%m"
        return func.strftime(fmt, type_coerce(column, String))
    fmt = "YYYY-MM-DD" if name == "day" else "YYYY-MM"
    return func.to_char(func.timezone("UTC", column), fmt)


def _group_exprs(group_by: Sequence[str], dialect: str) -> list[ColumnElement[Any]]:
    unknown = [key for key in group_by if key not in GROUP_BY_CHOICES]
    if unknown or len(set(group_by)) != len(group_by):
        raise ValidationFailed(
            f"group_by must be distinct keys among {', '.join(GROUP_BY_CHOICES)}; got {group_by}"
        )
    exprs: list[ColumnElement[Any]] = []
    for key in group_by:
        if key in PERIOD_KEYS:
            exprs.append(_period_expr(key, dialect).label(key))
        else:
            attribute: InstrumentedAttribute[Any] = getattr(UsageRecord, key)
            exprs.append(attribute.label(key))
    return exprs


def _micro() -> ColumnElement[int]:
    """The quantity as raw integer micro-units (SQLite's storage)."""
    return type_coerce(UsageRecord.quantity, BigInteger)


def _value_columns(aggregation: str, dialect: str) -> list[ColumnElement[Any]]:
    """Aggregate columns for everything but ``latest``; decoded by :func:`_value`."""
    if aggregation == "sum":
        if dialect == "sqlite":
            # Whole units and remainders summed apart: exact, no 64-bit overflow.
            micro = _micro()
            whole = micro.op("/")(literal(MICRO, BigInteger))
            fraction = micro.op("%")(literal(MICRO, BigInteger))
            return [
                type_coerce(func.sum(whole), BigInteger),
                type_coerce(func.sum(fraction), BigInteger),
            ]
        return [func.sum(UsageRecord.quantity)]
    if aggregation == "max":
        return [func.max(UsageRecord.quantity)]
    if aggregation == "unique_count":
        return [func.count(UsageRecord.dimension.distinct())]
    return [func.count()]


def _value(aggregation: str, dialect: str, parts: Sequence[Any]) -> Decimal:
    if aggregation == "sum" and dialect == "sqlite":
        whole, fraction = (int(p or 0) for p in parts)
        return (Decimal(whole) + Decimal(fraction).scaleb(-SCALE)).quantize(ZERO)
    (value,) = parts
    if value is None:
        return ZERO
    if aggregation in ("count", "unique_count"):
        return Decimal(int(value))
    return Decimal(value).quantize(ZERO)


def _check_aggregation(aggregation: str) -> None:
    if aggregation not in AGGREGATIONS:
        raise ValidationFailed(f"aggregation must be one of {', '.join(AGGREGATIONS)}")


def aggregate(
    session: Session,
    flt: RecordFilter,
    *,
    group_by: Sequence[str] = ("account_id", "meter"),
    aggregation: str = "sum",
) -> list[UsageTotal]:
    """Aggregate the records matching ``flt`` per group, ordered by the group keys.

    Raises:
        ValidationFailed: unknown aggregation or group key, or a bad window.
    """
    _check_aggregation(aggregation)
    dialect = _dialect(session)
    keys = _group_exprs(group_by, dialect)
    if aggregation == "latest":
        return _latest(session, flt, group_by, keys)
    values = _value_columns(aggregation, dialect)
    query: Select[Any] = (
        select(*keys, *values, func.count().label("n"))
        .where(*flt.clauses())
        .group_by(*keys)
        .order_by(*keys)
    )
    totals: list[UsageTotal] = []
    width = len(keys)
    for row in session.execute(query):
        if not row[-1]:
            continue  # no GROUP BY: one row even when nothing matched
        group = {name: _key(row[i]) for i, name in enumerate(group_by)}
        value = _value(aggregation, dialect, row[width:-1])
        totals.append(UsageTotal(keys=group, value=value, records=int(row[-1])))
    return totals


def _key(value: Any) -> str | None:
    return None if value is None else str(value)


def _latest(
    session: Session, flt: RecordFilter, group_by: Sequence[str], keys: list[ColumnElement[Any]]
) -> list[UsageTotal]:
    partition = keys or None
    ranked = (
        select(
            *keys,
            UsageRecord.quantity.label("quantity"),
            func.row_number()
            .over(
                partition_by=partition,
                order_by=(
                    UsageRecord.recorded_at.desc(),
                    UsageRecord.seq.desc(),
                    UsageRecord.id.desc(),
                ),
            )
            .label("rank"),
            func.count().over(partition_by=partition).label("n"),
        )
        .where(*flt.clauses())
        .subquery()
    )
    outer_keys = [ranked.c[name] for name in group_by]
    query = (
        select(*outer_keys, ranked.c.quantity, ranked.c.n)
        .where(ranked.c.rank == 1)
        .order_by(*outer_keys)
    )
    return [
        UsageTotal(
            keys={name: _key(row[i]) for i, name in enumerate(group_by)},
            value=Decimal(row[-2]).quantize(ZERO),
            records=int(row[-1]),
        )
        for row in session.execute(query)
    ]


def usage_totals(
    session: Session,
    *,
    tenant_id: str,
    start: datetime,
    end: datetime,
    account_id: str | None = None,
    meter: str | None = None,
    device_id: str | None = None,
    group_by: Sequence[str] = ("account_id", "meter"),
    aggregation: str = "sum",
    by_received: bool = False,
    covered: bool | None = None,
    over_cap: bool | None = None,
) -> list[UsageTotal]:
    """Usage per group in ``[start, end)``.

    Args:
        session: any session.
        tenant_id: the tenant whose records count (always applied).
        start: window start (inclusive, tz-aware).
        end: window end (exclusive, tz-aware).
        account_id: only records billed to this account.
        meter: only this metered feature.
        device_id: only this device.
        group_by: keys among :data:`GROUP_BY_CHOICES` (``()``: one total).
        aggregation: ``sum``, ``count``, ``max``, ``unique_count`` or ``latest``.
        by_received: window on ``received_at`` instead of ``recorded_at``.
        covered: ``True`` only records an entitlement covers (``account_id``
            set), ``False`` only uncovered ones (revenue leakage).
        over_cap: ``True``/``False`` only records (not) marked over the cap.

    Returns:
        One :class:`UsageTotal` per non-empty group, ordered by the keys.

    Raises:
        ValidationFailed: unknown aggregation or group key, naive or inverted window.
    """
    flt = RecordFilter(
        tenant_id=tenant_id,
        start=start,
        end=end,
        account_id=account_id,
        meter=meter,
        device_id=device_id,
        by_received=by_received,
        covered=covered,
        over_cap=over_cap,
    )
    return aggregate(session, flt, group_by=group_by, aggregation=aggregation)


def evaluate_meter(  # noqa: PLR0917 - the signature billing codes against
    session: Session,
    meter: MeterLike,
    tenant_id: str,
    account_id: str | None,
    start: datetime,
    end: datetime,
    *,
    device_id: str | None = None,
    by_received: bool = False,
) -> Decimal:
    """The meter's value for one account (or every account with ``None``) in ``[start, end)``.

    ``0`` when no record matches. Only records billed to ``account_id``
    count (uncovered usage is leakage, not an account's bill).
    """
    totals = usage_totals(
        session,
        tenant_id=tenant_id,
        start=start,
        end=end,
        account_id=account_id,
        meter=meter.feature_key,
        device_id=device_id,
        group_by=(),
        aggregation=meter.aggregation,
        by_received=by_received,
    )
    if not totals:
        return ZERO if meter.aggregation not in ("count", "unique_count") else Decimal(0)
    return totals[0].value


_RECORD_COLUMNS = [getattr(UsageRecord, name) for name in RECORD_FIELDS]


def _select_rows() -> Select[Any]:
    """The record columns as plain rows: no ORM identity map, nothing left in the session."""
    return select(*_RECORD_COLUMNS)


def _row(values: Any) -> UsageRecordRow:
    return UsageRecordRow(*values)


def iter_records(
    session: Session,
    *,
    tenant_id: str,
    start: datetime,
    end: datetime,
    account_id: str | None = None,
    device_id: str | None = None,
    meter: str | None = None,
    chunk: int = 10_000,
    by_received: bool = False,
) -> Iterator[UsageRecordRow]:
    """Every matching record ordered by time then id, read ``chunk`` rows at a time.

    Keyset pagination on (time, id): memory stays bounded by ``chunk`` and
    no server-side cursor is held between chunks.
    """
    if chunk < 1:
        raise ValueError("chunk must be positive")
    flt = RecordFilter(
        tenant_id=tenant_id,
        start=start,
        end=end,
        account_id=account_id,
        meter=meter,
        device_id=device_id,
        by_received=by_received,
    )
    column = UsageRecord.received_at if by_received else UsageRecord.recorded_at
    base = _select_rows().where(*flt.clauses()).order_by(column, UsageRecord.id).limit(chunk)
    after: tuple[datetime, int] | None = None
    while True:
        query = base
        if after is not None:
            moment, last_id = after
            query = query.where(
                or_(column > moment, and_(column == moment, UsageRecord.id > last_id))
            )
        rows = [_row(values) for values in session.execute(query)]
        yield from rows
        if len(rows) < chunk:
            return
        last = rows[-1]
        after = (last.received_at if by_received else last.recorded_at, last.id)


def page_records(
    session: Session, flt: RecordFilter, *, limit: int, offset: int
) -> tuple[list[UsageRecordRow], int]:
    """One page of matching records (time then id order) and the total count."""
    column = UsageRecord.received_at if flt.by_received else UsageRecord.recorded_at
    clauses = flt.clauses()
    total = int(session.scalar(select(func.count()).select_from(UsageRecord).where(*clauses)) or 0)
    query = (
        _select_rows().where(*clauses).order_by(column, UsageRecord.id).limit(limit).offset(offset)
    )
    return [_row(values) for values in session.execute(query)], total


@dataclass(frozen=True, slots=True)
class Leakage:
    """Revenue leakage in a window.

    Attributes:
        uncovered: usage no entitlement covered (``account_id`` null), per group.
        over_cap: usage marked over its feature's cap, per group.
    """

    uncovered: list[UsageTotal]
    over_cap: list[UsageTotal]


def leakage(
    session: Session,
    *,
    tenant_id: str,
    start: datetime,
    end: datetime,
    meter: str | None = None,
    device_id: str | None = None,
    account_id: str | None = None,
    group_by: Sequence[str] = ("device_id", "meter"),
    by_received: bool = False,
) -> Leakage:
    """Usage without an entitlement and usage over its cap, summed per group.

    ``account_id`` applies to the over-cap part only (uncovered usage has no
    account). Group keys as :func:`usage_totals`; for the uncovered part an
    ``account_id``, ``product_id`` or ``entitlement_id`` key is always ``None``.
    """
    common: dict[str, Any] = {
        "tenant_id": tenant_id,
        "start": start,
        "end": end,
        "meter": meter,
        "device_id": device_id,
        "group_by": group_by,
        "by_received": by_received,
    }
    return Leakage(
        uncovered=usage_totals(session, covered=False, **common),
        over_cap=usage_totals(session, over_cap=True, account_id=account_id, **common),
    )
