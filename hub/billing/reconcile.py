"""The billing audit: recompute every closed period from the raw usage records.

``hub billing audit`` (and ``GET /billing/audit``) re-derives every invoice
line of every closed period from ``usage_records`` alone, with code
independent of the closing job's: records are read one by one
(:func:`hub.telemetry.queries.iter_records`), filtered by receive time and
aggregated here in Python, then priced with the plan snapshot stored on the
line. Each difference is reported; none is ever corrected silently.

Checks, for each closed period and charge:

- ``quantity``: a line's cumulative quantity equals the aggregate of the
  records recorded in the period and received before its invoice's cutoff;
- ``amount``: its cumulative amount equals the price of that quantity;
- ``breakdown``: its stored breakdown equals the recomputed one;
- ``line_quantity``/``line_amount``: each line carries exactly the change
  since the previous line of the charge (no double billing across invoices);
- ``plan_changed``: every line of a charge uses the same plan snapshot;
- ``missing_line``: priced usage with no line at all;
- ``unbilled_usage``: records received before the account's latest close
  that no line accounts for (a missed adjustment);
- ``recurring``: a recurring fee's quantity and amount match its basis;
- ``invoice_total``: an invoice's subtotal, adjustments and total are the
  sums of its lines.

Records recorded in a closed period and received after the account's latest
close are not differences: they are *pending*, for the next invoice.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from sqlalchemy import select
from sqlalchemy.orm import Session

from hub.billing.models import BillingPeriod, Invoice, InvoiceLine
from hub.billing.price_plans import plans_in_force
from hub.billing.rating import PlanRef, breakdown_of, charge_of
from hub.billing.usage import UsageKey, canonical
from hub.telemetry.queries import UsageRecordRow, iter_records


@dataclass(frozen=True, slots=True)
class Difference:
    """One disagreement between the stored invoices and the raw records."""

    check: str
    account_id: str
    period_id: str
    product_id: str | None
    meter: str | None
    invoice_id: str | None
    invoice_number: str | None
    position: int | None
    expected: str
    stored: str


@dataclass(frozen=True, slots=True)
class Pending:
    """Late records awaiting the next invoice of their account."""

    account_id: str
    period_id: str
    product_id: str
    meter: str
    records: int


@dataclass
class AuditReport:
    """What the audit looked at and every difference it found."""

    periods: int = 0
    invoices: int = 0
    lines: int = 0
    records: int = 0
    differences: list[Difference] = field(default_factory=list)
    pending: list[Pending] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether the stored billing matches the raw records exactly."""
        return not self.differences


def aggregate_rows(rows: Sequence[UsageRecordRow], aggregation: str) -> Decimal:
    """The aggregate of ``rows`` (the semantics of :mod:`hub.telemetry.queries`)."""
    if not rows:
        return Decimal(0)
    if aggregation == "sum":
        value = sum((row.quantity for row in rows), Decimal(0))
    elif aggregation == "count":
        value = Decimal(len(rows))
    elif aggregation == "max":
        value = max(row.quantity for row in rows)
    elif aggregation == "unique_count":
        value = Decimal(len({row.dimension for row in rows if row.dimension is not None}))
    elif aggregation == "latest":
        value = max(rows, key=lambda row: (row.recorded_at, row.seq, row.id)).quantity
    else:
        raise ValueError(f"unknown aggregation {aggregation!r}")
    return canonical(value)


@dataclass(frozen=True, slots=True)
class _Line:
    line: InvoiceLine
    invoice: Invoice


def audit_billing(
    session: Session, tenant_id: str, *, account_id: str | None = None
) -> AuditReport:
    """Recompute every closed period of the tenant (or one account) and compare.

    Returns:
        The report; ``report.ok`` is false when anything differs.
    """
    query = select(BillingPeriod).where(
        BillingPeriod.tenant_id == tenant_id, BillingPeriod.status == "closed"
    )
    if account_id is not None:
        query = query.where(BillingPeriod.account_id == account_id)
    periods = list(session.scalars(query.order_by(BillingPeriod.account_id, BillingPeriod.seq)))
    latest: dict[str, datetime] = {}
    for period in periods:
        assert period.cutoff is not None
        latest[period.account_id] = max(latest.get(period.account_id, period.cutoff), period.cutoff)
    report = AuditReport(periods=len(periods))
    for period in periods:
        _audit_period(session, period, latest[period.account_id], report)
    _audit_invoices(session, tenant_id, [p.id for p in periods], report)
    return report


def _lines_for(session: Session, period: BillingPeriod) -> list[_Line]:
    rows = session.execute(
        select(InvoiceLine, Invoice)
        .join(Invoice, Invoice.id == InvoiceLine.invoice_id)
        .join(BillingPeriod, BillingPeriod.id == Invoice.period_id)
        .where(InvoiceLine.tenant_id == period.tenant_id, InvoiceLine.period_id == period.id)
        .order_by(BillingPeriod.seq, InvoiceLine.position)
    )
    return [_Line(line, invoice) for line, invoice in rows]


def _audit_period(
    session: Session, period: BillingPeriod, latest_cutoff: datetime, report: AuditReport
) -> None:
    records: dict[UsageKey, list[UsageRecordRow]] = defaultdict(list)
    for row in iter_records(
        session, tenant_id=period.tenant_id, start=period.starts_at, end=period.ends_at,
        account_id=period.account_id,
    ):  # fmt: skip
        report.records += 1
        if row.product_id is not None:
            records[(row.product_id, row.meter)].append(row)
    lines = _lines_for(session, period)
    report.lines += len(lines)
    charges: dict[UsageKey, list[_Line]] = defaultdict(list)
    for item in lines:
        if item.line.kind == "recurring":
            _audit_recurring(period, item, report)
        else:
            charges[(item.line.product_id, str(item.line.meter))].append(item)
    for key, items in charges.items():
        rows = records.get(key, [])
        _audit_charge(period, key, items, rows, latest_cutoff=latest_cutoff, report=report)
    unbilled = sorted(set(records) - set(charges))
    if unbilled:
        _audit_missing(
            session, period, unbilled, records, latest_cutoff=latest_cutoff, report=report
        )
    for key, rows in sorted(records.items()):
        late = sum(1 for row in rows if row.received_at >= latest_cutoff)
        if late:
            report.pending.append(Pending(period.account_id, period.id, key[0], key[1], late))


def _diff(
    check: str,
    period: BillingPeriod,
    key: tuple[str | None, str | None],
    item: _Line | None,
    *,
    expected: object,
    stored: object,
) -> Difference:
    return Difference(
        check=check, account_id=period.account_id, period_id=period.id, product_id=key[0],
        meter=key[1], invoice_id=item.invoice.id if item else None,
        invoice_number=item.invoice.number if item else None,
        position=item.line.position if item else None, expected=str(expected), stored=str(stored),
    )  # fmt: skip


def _before(rows: Iterable[UsageRecordRow], cutoff: datetime) -> list[UsageRecordRow]:
    return [row for row in rows if row.received_at < cutoff]


def _audit_charge(
    period: BillingPeriod,
    key: UsageKey,
    items: list[_Line],
    rows: list[UsageRecordRow],
    *,
    latest_cutoff: datetime,
    report: AuditReport,
) -> None:
    first = items[0].line
    ref = PlanRef(first.plan_id, first.plan, first.aggregation)
    billed_quantity, billed_amount = Decimal(0), 0
    for item in items:
        line = item.line
        if (line.plan, line.aggregation) != (ref.plan, ref.aggregation):
            report.differences.append(
                _diff("plan_changed", period, key, item, expected=ref.plan, stored=line.plan)
            )
        quantity = aggregate_rows(_before(rows, item.invoice.usage_cutoff), ref.aggregation)
        charge = charge_of(ref, quantity)
        for check, expected, stored in (
            ("quantity", quantity, line.cumulative_quantity),
            ("amount", charge.total, line.cumulative_amount),
            ("line_quantity", line.cumulative_quantity - billed_quantity, line.quantity),
            ("line_amount", line.cumulative_amount - billed_amount, line.amount),
        ):
            if expected != stored:
                report.differences.append(
                    _diff(check, period, key, item, expected=expected, stored=stored)
                )
        if breakdown_of(charge) != line.breakdown:
            report.differences.append(
                _diff(
                    "breakdown",
                    period,
                    key,
                    item,
                    expected=breakdown_of(charge),
                    stored=line.breakdown,
                )
            )
        billed_quantity, billed_amount = line.cumulative_quantity, line.cumulative_amount
    final = aggregate_rows(_before(rows, latest_cutoff), ref.aggregation)
    if final != billed_quantity:
        report.differences.append(
            _diff("unbilled_usage", period, key, items[-1], expected=final, stored=billed_quantity)
        )


def _audit_missing(
    session: Session,
    period: BillingPeriod,
    keys: list[UsageKey],
    records: dict[UsageKey, list[UsageRecordRow]],
    *,
    latest_cutoff: datetime,
    report: AuditReport,
) -> None:
    plans = plans_in_force(
        session,
        period.tenant_id,
        {k[0] for k in keys},
        period.ends_at,
        created_before=period.closed_at,
    )
    for key in keys:
        plan = plans.get(key)
        if plan is None:
            continue  # unpriced usage: the leakage report's business, not an invoice's
        ref = PlanRef(plan.id, plan.plan, plan.aggregation)
        quantity = aggregate_rows(_before(records[key], latest_cutoff), plan.aggregation)
        amount = charge_of(ref, quantity).total
        if quantity != 0 or amount != 0:
            report.differences.append(
                _diff(
                    "missing_line",
                    period,
                    key,
                    None,
                    expected=f"{quantity} units, {amount}",
                    stored="no line",
                )
            )


def _audit_recurring(period: BillingPeriod, item: _Line, report: AuditReport) -> None:
    line = item.line
    key = (line.product_id, None)
    basis = (line.basis or {}).get("entitlements", [])
    quantity = Decimal(sum(int(e["quantity"]) for e in basis))
    amount = charge_of(PlanRef(line.plan_id, line.plan, line.aggregation), quantity).total
    if (quantity, amount, amount) != (line.quantity, line.amount, line.cumulative_amount):
        report.differences.append(
            _diff(
                "recurring",
                period,
                key,
                item,
                expected=f"{quantity} x -> {amount}",
                stored=f"{line.quantity} x -> {line.amount}",
            )
        )


def _audit_invoices(
    session: Session, tenant_id: str, period_ids: list[str], report: AuditReport
) -> None:
    if not period_ids:
        return
    totals: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    invoices: list[Invoice] = []
    for start in range(0, len(period_ids), 500):
        chunk = period_ids[start : start + 500]
        invoices.extend(
            session.scalars(
                select(Invoice).where(Invoice.tenant_id == tenant_id, Invoice.period_id.in_(chunk))
            )
        )
    ids = [invoice.id for invoice in invoices]
    for start in range(0, len(ids), 500):
        for invoice_id, kind, amount in session.execute(
            select(InvoiceLine.invoice_id, InvoiceLine.kind, InvoiceLine.amount).where(
                InvoiceLine.invoice_id.in_(ids[start : start + 500])
            )
        ):
            totals[invoice_id][1 if kind == "adjustment" else 0] += int(amount)
    report.invoices = len(invoices)
    for invoice in invoices:
        subtotal, adjustments = totals[invoice.id]
        stored = (invoice.subtotal, invoice.adjustments, invoice.total)
        expected = (subtotal, adjustments, subtotal + adjustments)
        if stored != expected:
            report.differences.append(
                Difference(
                    check="invoice_total", account_id=invoice.account_id,
                    period_id=invoice.period_id, product_id=None, meter=None,
                    invoice_id=invoice.id, invoice_number=invoice.number, position=None,
                    expected=str(expected), stored=str(stored),
                )
            )  # fmt: skip
