"""``/api/v1/billing``: periods, running the period job, the audit, revenue leakage."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from typing import Literal

from fastapi import APIRouter, Request
from pydantic import AwareDatetime, BaseModel
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from hub.api.deps import (
    AdminDep,
    NowDep,
    Page,
    PaginationDep,
    SessionDep,
    ViewerDep,
)
from hub.billing.jobs import run_periods
from hub.billing.leakage import leakage_report
from hub.billing.models import BillingPeriod
from hub.billing.notify import cap_period
from hub.billing.reconcile import audit_billing
from hub.billing.routers.deps import BillingSettingsDep
from hub.billing.schemas import DecimalStr, PeriodPublic
from hub.errors import NotFound, ValidationFailed

router = APIRouter(prefix="/billing", tags=["billing"])


@router.get("/periods")
def list_periods(
    *,
    session: SessionDep,
    caller: ViewerDep,
    page: PaginationDep,
    account_id: str | None = None,
    status: Literal["open", "closing", "closed"] | None = None,
) -> Page[PeriodPublic]:
    """Billing periods, by account then start."""
    where = [BillingPeriod.tenant_id == caller.tenant_id]
    if account_id is not None:
        where.append(BillingPeriod.account_id == account_id)
    if status is not None:
        where.append(BillingPeriod.status == status)
    total = session.scalar(select(func.count()).select_from(BillingPeriod).where(*where)) or 0
    rows = session.scalars(
        select(BillingPeriod)
        .where(*where)
        .order_by(BillingPeriod.account_id, BillingPeriod.seq)
        .limit(page.limit)
        .offset(page.offset)
    )
    return Page[PeriodPublic](
        items=[PeriodPublic.model_validate(r) for r in rows],
        total=total,
        limit=page.limit,
        offset=page.offset,
    )


def _period(session: Session, tenant_id: str, period_id: str) -> BillingPeriod:
    period = session.get(BillingPeriod, period_id)
    if period is None or period.tenant_id != tenant_id:
        raise NotFound(f"billing period {period_id} not found")
    return period


@router.get("/periods/{period_id}")
def get_period(period_id: str, session: SessionDep, caller: ViewerDep) -> PeriodPublic:
    """One billing period."""
    return PeriodPublic.model_validate(_period(session, caller.tenant_id, period_id))


class RunOut(BaseModel):
    """What a run of the period job did for the caller's tenant."""

    opened: int
    closing: int
    closed_periods: list[str]
    invoices: list[str]
    failed: list[str]


@router.post("/run")
def run_billing(
    request: Request,
    session: SessionDep,
    caller: AdminDep,
    now: NowDep,
    settings: BillingSettingsDep,
) -> RunOut:
    """Run the period job now for the caller's tenant (it also runs on a schedule).

    Opens due periods, marks ended ones closing and closes those whose grace
    window has passed, building (and, by default, finalizing) their invoices.
    """
    session.commit()  # the job uses its own transactions (SQLite: one writer at a time)
    factory: sessionmaker[Session] = request.app.state.session_factory
    run = run_periods(factory, now, settings, tenant_id=caller.tenant_id)
    return RunOut(
        opened=run.opened,
        closing=run.closing,
        closed_periods=[c.period_id for c in run.closed],
        invoices=[i for c in run.closed for i in c.invoice_ids],
        failed=run.failed,
    )


class DifferenceOut(BaseModel):
    """One difference found by the audit."""

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


class PendingOut(BaseModel):
    """Late records waiting for the account's next invoice."""

    account_id: str
    period_id: str
    product_id: str
    meter: str
    records: int


class AuditOut(BaseModel):
    """The audit's verdict: ``ok`` is false when anything differs."""

    ok: bool
    periods: int
    invoices: int
    lines: int
    records: int
    differences: list[DifferenceOut]
    pending: list[PendingOut]


@router.get("/audit")
def audit(session: SessionDep, caller: ViewerDep, account_id: str | None = None) -> AuditOut:
    """Recompute every closed period from the raw usage records and compare.

    Always 200; ``ok`` false and ``differences`` listing each mismatch when
    the stored invoices do not match the records.
    """
    report = audit_billing(session, caller.tenant_id, account_id=account_id)
    return AuditOut(
        ok=report.ok,
        periods=report.periods,
        invoices=report.invoices,
        lines=report.lines,
        records=report.records,
        differences=[DifferenceOut(**asdict(d)) for d in report.differences],
        pending=[PendingOut(**asdict(p)) for p in report.pending],
    )


class LeakOut(BaseModel):
    """One group of usage no invoice will charge for."""

    kind: str
    account_id: str | None
    device_id: str | None
    product_id: str | None
    meter: str
    period_start: datetime
    period_end: datetime
    quantity: DecimalStr
    records: int


@router.get("/leakage")
def leakage(
    *,
    session: SessionDep,
    caller: ViewerDep,
    now: NowDep,
    period_id: str | None = None,
    since: AwareDatetime | None = None,
    until: AwareDatetime | None = None,
    account_id: str | None = None,
    meter: str | None = None,
    device_id: str | None = None,
) -> list[LeakOut]:
    """Usage without entitlement, over cap, or without a price plan.

    The window is a billing period (``period_id``, which also selects its
    account), or ``[since, until)``, by default the current UTC month.
    """
    if period_id is not None:
        period = _period(session, caller.tenant_id, period_id)
        start, end, account_id = period.starts_at, period.ends_at, period.account_id
    else:
        default_start, default_end = cap_period("month", now)
        start, end = since or default_start, until or default_end
        if end <= start:
            raise ValidationFailed("until must be after since")
    rows = leakage_report(
        session, tenant_id=caller.tenant_id, start=start, end=end, account_id=account_id,
        meter=meter, device_id=device_id,
    )  # fmt: skip
    return [LeakOut(**asdict(row)) for row in rows]
