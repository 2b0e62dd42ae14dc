"""Opening and closing billing periods, and building their invoices.

The scheduled job (:mod:`hub.billing.jobs`) calls, in order:

1. :func:`open_periods`: every account with entitlements gets consecutive
   monthly periods from its anchor (the earliest ``starts_at`` of its
   subscription entitlements, or of any entitlement if it has no
   subscription) up to the period containing ``now``. The anchor is fixed
   when the first period is created. Periods stop one month after the
   account's last entitlement ends (that trailing period still catches late
   usage); an entitlement without an end keeps them going.
2. :func:`mark_closing`: a period whose end has passed is ``closing``: no new
   usage belongs to it, but records recorded inside it may still arrive.
3. :func:`close_period` for each ``closing`` period whose grace window has
   passed (``now >= ends_at + grace``), oldest first per account: the
   period's usage is every record recorded in ``[starts_at, ends_at)`` and
   received before ``cutoff = ends_at + grace``; the recurring fees, usage
   lines and adjustments for earlier periods become draft invoices, and the
   period is ``closed``. Records recorded in it but received at or after the
   cutoff are *late*: the next close re-prices the period with them and
   bills the difference as an adjustment line.

Each period closes in its own transaction; a conditional ``UPDATE`` claims it,
so two workers running the job never close one period twice.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import case, func, or_, select, update
from sqlalchemy.orm import Session

from hub.audit.service import record
from hub.billing import invoices as invoice_service
from hub.billing.models import BillingPeriod, Invoice, InvoiceLine
from hub.billing.periods import period_bounds, period_index
from hub.billing.price_plans import plans_in_force
from hub.billing.rating import (
    Billed,
    LineDraft,
    PlanRef,
    adjustment_line,
    recurring_line,
    usage_line,
)
from hub.billing.usage import UsageKey, late_window, period_usage
from hub.entitlements.models import Entitlement

log = logging.getLogger(__name__)

RECURRING_MODELS = ("subscription", "floating", "node_locked", "metered")
"""License models a product's recurring fee applies to (not perpetual, not trial)."""
TRAILING = timedelta(days=31)
_CHUNK = 500
LATE_MARGIN = timedelta(hours=1)
"""Late records are looked for from this long before the previous cutoff (commit races)."""


# ---------------------------------------------------------------- opening


@dataclass(frozen=True, slots=True)
class _AccountTerms:
    tenant_id: str
    account_id: str
    anchor: datetime
    open_ended: bool
    last_end: datetime | None

    def billable_from(self, start: datetime) -> bool:
        """Whether a period starting at ``start`` is still worth opening."""
        return self.open_ended or self.last_end is None or start < self.last_end + TRAILING


def _terms(session: Session, account_ids: Iterable[str]) -> list[_AccountTerms]:
    subscription = case(
        (Entitlement.license_model == "subscription", Entitlement.starts_at), else_=None
    )
    open_ended = func.sum(case((Entitlement.ends_at.is_(None), 1), else_=0))
    query = select(
        Entitlement.tenant_id,
        Entitlement.account_id,
        func.min(subscription),
        func.min(Entitlement.starts_at),
        open_ended,
        func.max(Entitlement.ends_at),
    ).group_by(Entitlement.tenant_id, Entitlement.account_id)
    query = query.where(Entitlement.account_id.in_(list(account_ids)))
    return [
        _AccountTerms(tenant, account, sub_start or any_start, bool(ended), last_end)
        for tenant, account, sub_start, any_start, ended, last_end in session.execute(query)
    ]


def open_periods(session: Session, now: datetime, tenant_id: str | None = None) -> int:
    """Create every period due up to ``now`` (of one tenant, or all); returns how many."""
    periods = select(BillingPeriod.account_id).group_by(BillingPeriod.account_id)
    if tenant_id is not None:
        periods = periods.where(BillingPeriod.tenant_id == tenant_id)
    latest = {
        account: (seq, anchor)
        for account, seq, anchor in session.execute(
            periods.add_columns(func.max(BillingPeriod.seq), func.min(BillingPeriod.anchor_at))
        )
    }
    stale = set(session.scalars(periods.having(func.max(BillingPeriod.ends_at) <= now)))
    without = select(Entitlement.account_id).where(
        Entitlement.account_id.not_in(select(BillingPeriod.account_id).distinct())
    )
    if tenant_id is not None:
        without = without.where(Entitlement.tenant_id == tenant_id)
    wanted = sorted(stale | set(session.scalars(without.distinct())))
    created = 0
    for start in range(0, len(wanted), _CHUNK):
        for terms in _terms(session, wanted[start : start + _CHUNK]):
            seq, anchor = latest.get(terms.account_id, (-1, terms.anchor))
            created += _open_account(session, terms, anchor, seq + 1, now)
    return created


def _open_account(
    session: Session, terms: _AccountTerms, anchor: datetime, first: int, now: datetime
) -> int:
    if now < anchor:
        return 0
    created = 0
    for seq in range(first, period_index(anchor, now) + 1):
        start, end = period_bounds(anchor, seq)
        if not terms.billable_from(start):
            break
        period = BillingPeriod(
            id=str(uuid.uuid4()), tenant_id=terms.tenant_id, account_id=terms.account_id,
            seq=seq, anchor_at=anchor, starts_at=start, ends_at=end, status="open",
            cutoff=None, closed_at=None, created_at=now,
        )  # fmt: skip
        session.add(period)
        record(
            session, tenant_id=terms.tenant_id, actor="system", action="billing_period.open",
            target_type="billing_period", target_id=period.id, now=now,
            detail={"account_id": terms.account_id, "seq": seq, "starts_at": start.isoformat(),
                    "ends_at": end.isoformat()},
        )  # fmt: skip
        created += 1
    session.flush()
    return created


def mark_closing(session: Session, now: datetime, tenant_id: str | None = None) -> int:
    """Move ended ``open`` periods to ``closing``; returns how many."""
    query = select(BillingPeriod).where(
        BillingPeriod.status == "open", BillingPeriod.ends_at <= now
    )
    if tenant_id is not None:
        query = query.where(BillingPeriod.tenant_id == tenant_id)
    ended = list(session.scalars(query))
    for period in ended:
        period.status = "closing"
        record(
            session, tenant_id=period.tenant_id, actor="system", action="billing_period.closing",
            target_type="billing_period", target_id=period.id, now=now,
        )  # fmt: skip
    return len(ended)


def due_periods(
    session: Session, now: datetime, grace: timedelta, tenant_id: str | None = None
) -> list[str]:
    """Ids of ``closing`` periods whose grace window has passed, oldest first per account."""
    query = select(BillingPeriod.id).where(
        BillingPeriod.status == "closing", BillingPeriod.ends_at <= now - grace
    )
    if tenant_id is not None:
        query = query.where(BillingPeriod.tenant_id == tenant_id)
    return list(session.scalars(query.order_by(BillingPeriod.account_id, BillingPeriod.seq)))


# ---------------------------------------------------------------- closing


@dataclass(frozen=True, slots=True)
class Closed:
    """What closing one period produced."""

    period_id: str
    invoice_ids: tuple[str, ...]


def close_period(
    session: Session, period_id: str, *, now: datetime, grace: timedelta, finalize: bool
) -> Closed | None:
    """Close one period: rate it, store its draft invoices, finalize them if asked.

    Returns:
        What was produced, or ``None`` if the period is not due, an earlier
        period of the account is still open, or another worker closed it.
    """
    period = session.get(BillingPeriod, period_id)
    if period is None or period.status != "closing" or now < period.ends_at + grace:
        return None
    previous = _previous(session, period)
    if previous is not None and previous.status != "closed":
        return None
    cutoff = period.ends_at + grace
    claimed = session.execute(
        update(BillingPeriod)
        .where(BillingPeriod.id == period.id, BillingPeriod.status == "closing")
        .values(status="closed", cutoff=cutoff, closed_at=now)
        .execution_options(synchronize_session=False)
    )
    if getattr(claimed, "rowcount", 0) != 1:
        return None
    session.refresh(period)
    drafts, starts = _period_lines(session, period, previous, cutoff)
    stored = invoice_service.store_drafts(
        session, period, drafts, cutoff=cutoff, starts=starts, now=now
    )
    record(
        session, tenant_id=period.tenant_id, actor="system", action="billing_period.close",
        target_type="billing_period", target_id=period.id, now=now,
        detail={"cutoff": cutoff.isoformat(), "invoices": [i.id for i in stored]},
    )  # fmt: skip
    if finalize:
        for invoice in stored:
            invoice_service.finalize(
                session, tenant_id=period.tenant_id, invoice_id=invoice.id, actor="system", now=now
            )
    return Closed(period.id, tuple(i.id for i in stored))


def _previous(session: Session, period: BillingPeriod) -> BillingPeriod | None:
    if period.seq == 0:
        return None
    return session.scalar(
        select(BillingPeriod).where(
            BillingPeriod.account_id == period.account_id, BillingPeriod.seq == period.seq - 1
        )
    )


def _period_lines(
    session: Session, period: BillingPeriod, previous: BillingPeriod | None, cutoff: datetime
) -> tuple[list[LineDraft], dict[str, datetime]]:
    drafts = _own_lines(session, period, cutoff)
    starts = {period.id: period.starts_at}
    if previous is not None and previous.cutoff is not None:
        for earlier in _late_periods(session, period, previous.cutoff, cutoff):
            starts[earlier.id] = earlier.starts_at
            drafts.extend(_adjustments(session, earlier, cutoff))
    return drafts, starts


def _entitlements(session: Session, period: BillingPeriod) -> list[Entitlement]:
    return list(
        session.scalars(
            select(Entitlement)
            .where(
                Entitlement.tenant_id == period.tenant_id,
                Entitlement.account_id == period.account_id,
                Entitlement.starts_at < period.ends_at,
                or_(Entitlement.ends_at.is_(None), Entitlement.ends_at > period.starts_at),
            )
            .order_by(Entitlement.created_at, Entitlement.id)
        )
    )


def _ref(plan: Any) -> PlanRef:
    return PlanRef(plan_id=plan.id, plan=plan.plan, aggregation=plan.aggregation)


def _own_lines(session: Session, period: BillingPeriod, cutoff: datetime) -> list[LineDraft]:
    """The period's recurring fees and usage lines."""
    entitlements = _entitlements(session, period)
    usage = _usage(session, period, cutoff, {"sum"})
    products = {e.product_id for e in entitlements} | {key[0] for key in usage["sum"]}
    plans = plans_in_force(session, period.tenant_id, products, period.ends_at)
    metered = {key: plan for key, plan in plans.items() if key[1] is not None}
    others = {p.aggregation for p in metered.values()} - {"sum"}
    usage.update(_usage(session, period, cutoff, others))
    drafts: list[LineDraft] = []
    for (product_id, meter), plan in sorted(
        plans.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")
    ):
        if meter is None:
            basis = _recurring_basis(entitlements, product_id)
            line = recurring_line(period.id, product_id, _ref(plan), basis)
        else:
            quantity = usage[plan.aggregation].get((product_id, meter), Decimal(0))
            line = usage_line(period.id, product_id, meter, _ref(plan), quantity)
        if line is not None:
            drafts.append(line)
    return drafts


def _recurring_basis(entitlements: list[Entitlement], product_id: str) -> list[dict[str, Any]]:
    return [
        {"entitlement_id": e.id, "license_model": e.license_model, "quantity": e.quantity}
        for e in entitlements
        if e.product_id == product_id
        and e.license_model in RECURRING_MODELS
        and e.status != "revoked"
    ]


def _usage(
    session: Session, period: BillingPeriod, cutoff: datetime, aggregations: Iterable[str]
) -> dict[str, dict[UsageKey, Decimal]]:
    return period_usage(
        session,
        tenant_id=period.tenant_id,
        account_id=period.account_id,
        start=period.starts_at,
        end=period.ends_at,
        cutoff=cutoff,
        aggregations=aggregations,
    )


# ---------------------------------------------------------------- adjustments


def _late_periods(
    session: Session, period: BillingPeriod, previous_cutoff: datetime, cutoff: datetime
) -> list[BillingPeriod]:
    """Closed periods of the account that records reached since the previous close."""
    span = late_window(
        session,
        tenant_id=period.tenant_id,
        account_id=period.account_id,
        recorded_before=period.starts_at,
        received_from=previous_cutoff - LATE_MARGIN,
        received_before=cutoff,
    )
    if span is None:
        return []
    earliest, latest = span
    return list(
        session.scalars(
            select(BillingPeriod)
            .where(
                BillingPeriod.account_id == period.account_id,
                BillingPeriod.status == "closed",
                BillingPeriod.seq < period.seq,
                BillingPeriod.starts_at <= latest,
                BillingPeriod.ends_at > earliest,
            )
            .order_by(BillingPeriod.seq)
        )
    )


def billed_so_far(session: Session, period_id: str) -> dict[UsageKey, Billed]:
    """Per metered charge of a closed period, the cumulative billed state (latest line)."""
    rows = session.execute(
        select(InvoiceLine, BillingPeriod.seq)
        .join(Invoice, Invoice.id == InvoiceLine.invoice_id)
        .join(BillingPeriod, BillingPeriod.id == Invoice.period_id)
        .where(InvoiceLine.period_id == period_id, InvoiceLine.kind != "recurring")
        .order_by(BillingPeriod.seq, InvoiceLine.position)
    )
    billed: dict[UsageKey, Billed] = {}
    for line, _seq in rows:
        ref = PlanRef(line.plan_id, line.plan, line.aggregation)
        billed[(line.product_id, str(line.meter))] = Billed(
            line.cumulative_quantity, line.cumulative_amount, ref
        )
    return billed


def _adjustments(session: Session, earlier: BillingPeriod, cutoff: datetime) -> list[LineDraft]:
    """Adjustment lines bringing a closed period up to date with records received before cutoff."""
    billed = billed_so_far(session, earlier.id)
    usage_keys = _usage(session, earlier, cutoff, {"sum"})["sum"]
    products = {key[0] for key in usage_keys} | {key[0] for key in billed}
    plans = plans_in_force(
        session, earlier.tenant_id, products, earlier.ends_at, created_before=earlier.closed_at
    )
    for key in usage_keys:
        plan = plans.get(key)
        if key not in billed and plan is not None:
            billed[key] = Billed(Decimal(0), 0, _ref(plan))
    usage = _usage(session, earlier, cutoff, {b.ref.aggregation for b in billed.values()})
    drafts: list[LineDraft] = []
    for (product_id, meter), state in sorted(billed.items()):
        now_quantity = usage[state.ref.aggregation].get((product_id, meter), Decimal(0))
        line = adjustment_line(earlier.id, product_id, meter, state, now_quantity)
        if line is not None:
            drafts.append(line)
    return drafts
