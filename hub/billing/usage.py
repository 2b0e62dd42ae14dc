"""What billing reads of the usage tables, through :mod:`hub.telemetry.queries`.

A period's usage is the records **recorded** in ``[start, end)`` (the device's
clock) and **received** before a cutoff (the hub's commit time): the period's
own cutoff when it closes, a later one when an adjustment catches records
that arrived after the close. :class:`BillingFilter` adds that
``received_at < cutoff`` bound to the telemetry :class:`RecordFilter`, and
the aggregation itself is the telemetry code's (:func:`aggregate`), so billing
and usage reports never disagree on what ``sum`` or ``latest`` mean.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session

from hub.billing.columns import decimal_text
from hub.telemetry.models import UsageRecord
from hub.telemetry.queries import RecordFilter, aggregate

UsageKey = tuple[str, str]
"""``(product_id, meter)`` of covered usage."""


def canonical(value: Decimal) -> Decimal:
    """``value`` without trailing zeros (``5.000000`` -> ``5``), so breakdowns read the same."""
    return Decimal(decimal_text(value))


@dataclass(frozen=True, slots=True)
class BillingFilter(RecordFilter):
    """A telemetry record filter that also requires ``received_at < received_before``."""

    received_before: datetime | None = None

    def clauses(self) -> list[ColumnElement[bool]]:
        """The telemetry clauses plus the receive cutoff."""
        clauses = RecordFilter.clauses(self)
        if self.received_before is not None:
            clauses.append(UsageRecord.received_at < self.received_before)
        return clauses


def period_usage(
    session: Session,
    *,
    tenant_id: str,
    account_id: str,
    start: datetime,
    end: datetime,
    cutoff: datetime,
    aggregations: Iterable[str],
) -> dict[str, dict[UsageKey, Decimal]]:
    """An account's usage per ``(product, meter)`` under each aggregation.

    Args:
        session: any session.
        tenant_id: the tenant.
        account_id: the account billed.
        start: period start (recorded time, inclusive).
        end: period end (recorded time, exclusive).
        cutoff: only records received before this instant count.
        aggregations: the aggregations the plans in play need.

    Returns:
        ``{aggregation: {(product_id, meter): value}}``; keys without records are absent.
    """
    flt = BillingFilter(
        tenant_id=tenant_id,
        start=start,
        end=end,
        account_id=account_id,
        received_before=cutoff,
    )
    result: dict[str, dict[UsageKey, Decimal]] = {}
    for aggregation in sorted(set(aggregations)):
        totals = aggregate(session, flt, group_by=("product_id", "meter"), aggregation=aggregation)
        result[aggregation] = {
            (str(t.keys["product_id"]), str(t.keys["meter"])): canonical(t.value)
            for t in totals
            if t.keys["product_id"] is not None
        }
    return result


def late_window(
    session: Session,
    *,
    tenant_id: str,
    account_id: str,
    recorded_before: datetime,
    received_from: datetime,
    received_before: datetime,
) -> tuple[datetime, datetime] | None:
    """The recorded-time span of records that reached closed periods late.

    Records of ``account_id`` recorded before ``recorded_before`` (the start of
    the period being closed) and received in ``[received_from,
    received_before)``: the earliest and latest ``recorded_at`` among them, or
    ``None`` if there are none. The closing job recomputes only the closed
    periods this span touches.
    """
    row = session.execute(
        select(func.min(UsageRecord.recorded_at), func.max(UsageRecord.recorded_at)).where(
            UsageRecord.tenant_id == tenant_id,
            UsageRecord.account_id == account_id,
            UsageRecord.recorded_at < recorded_before,
            UsageRecord.received_at >= received_from,
            UsageRecord.received_at < received_before,
        )
    ).one()
    if row[0] is None:
        return None
    return _aware(row[0]), _aware(row[1])


def _aware(value: datetime) -> datetime:
    """An aware UTC instant, whatever the aggregate returned on this backend."""
    if isinstance(value, str):  # SQLite text, should the column type not apply
        value = datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=UTC)
