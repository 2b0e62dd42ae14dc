"""The billing plugin's periodic jobs: periods, notifications, webhook deliveries.

Each job is idempotent and safe to run on several hub workers at once (claims
are conditional updates, events are de-duplicated by key). Each unit of work
(one period, one tenant's checks, one delivery batch) has its own
transaction, and a failure is logged and leaves the rest going.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from hub.billing import closing as period_closing
from hub.billing import notify
from hub.billing.settings import BillingSettings
from hub.registry.models import Tenant

log = logging.getLogger(__name__)


@dataclass
class BillingRun:
    """What one pass of the period job did."""

    opened: int = 0
    closing: int = 0
    closed: list[period_closing.Closed] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def run_periods(
    session_factory: sessionmaker[Session],
    now: datetime,
    settings: BillingSettings,
    *,
    tenant_id: str | None = None,
) -> BillingRun:
    """Open due periods, mark ended ones closing, close those past their grace window."""
    run = BillingRun()
    with session_factory() as session:
        try:
            run.opened = period_closing.open_periods(session, now, tenant_id)
            run.closing = period_closing.mark_closing(session, now, tenant_id)
            session.commit()
        except IntegrityError:  # another worker opened the same periods first
            session.rollback()
            log.info("billing: periods opened concurrently by another worker; going on")
    grace = timedelta(seconds=settings.grace_seconds)
    with session_factory() as session:
        due = period_closing.due_periods(session, now, grace, tenant_id)
    for period_id in due:
        with session_factory() as session:
            try:
                closed = period_closing.close_period(
                    session, period_id, now=now, grace=grace, finalize=settings.auto_finalize
                )
                session.commit()
            except Exception:  # one bad period must not stop the others
                session.rollback()
                log.exception("billing: closing period %s failed; it stays closing", period_id)
                run.failed.append(period_id)
                continue
        if closed is not None:
            run.closed.append(closed)
    if run.opened or run.closed or run.failed:
        log.info(
            "billing: %d period(s) opened, %d closed, %d failed",
            run.opened,
            len(run.closed),
            len(run.failed),
        )
    return run


def run_notifications(
    session_factory: sessionmaker[Session], now: datetime, settings: BillingSettings
) -> int:
    """Threshold and expiry checks for every tenant; returns how many events were logged."""
    with session_factory() as session:
        tenants = list(session.scalars(select(Tenant.id).order_by(Tenant.id)))
    emitted = 0
    lead = timedelta(days=settings.expiring_days)
    for tenant_id in tenants:
        with session_factory() as session:
            emitted += notify.check_thresholds(session, tenant_id, now, settings.thresholds)
            emitted += notify.check_expiring(session, tenant_id, now, lead)
            session.commit()
    return emitted


def periods_job(
    session_factory: sessionmaker[Session],
    clock: Callable[[], datetime],
    settings: BillingSettings,
) -> Callable[[], object]:
    """The scheduler entry point of :func:`run_periods`."""

    def run() -> object:
        return run_periods(session_factory, clock(), settings)

    return run


def notifications_job(
    session_factory: sessionmaker[Session],
    clock: Callable[[], datetime],
    settings: BillingSettings,
) -> Callable[[], object]:
    """The scheduler entry point of :func:`run_notifications`."""

    def run() -> object:
        return run_notifications(session_factory, clock(), settings)

    return run
