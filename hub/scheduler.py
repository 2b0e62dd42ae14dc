"""APScheduler wiring: the hub's periodic jobs.

Jobs are declared in code at start (nothing lives only in memory) and are
idempotent, so a second hub worker running the same jobs is harmless.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from functools import partial

from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from hub.db.busy import busy_reason, is_busy
from hub.plugins import PeriodicJob
from hub.registry import claims, presence

log = logging.getLogger(__name__)


def sweep_presence(
    session_factory: sessionmaker[Session], clock: Callable[[], datetime], stale_after: timedelta
) -> int:
    """Mark devices offline whose heartbeats stopped; returns how many changed."""
    with session_factory() as session:
        changed = presence.sweep_stale(session, now=clock(), stale_after=stale_after)
        session.commit()
    if changed:
        log.info("presence sweep: %d device(s) marked offline", changed)
    return changed


def purge_claim_nonces(
    session_factory: sessionmaker[Session], clock: Callable[[], datetime], skew_seconds: int
) -> int:
    """Delete claim nonces older than twice the skew window; returns how many."""
    with session_factory() as session:
        deleted = claims.purge_nonces(session, now=clock(), skew_seconds=skew_seconds)
        session.commit()
    return deleted


def skip_when_busy(name: str, run: Callable[[], object]) -> Callable[[], None]:
    """``run`` as a job whose run meets a busy or unavailable database is skipped, not failed.

    SQLite under write load answers ``database is locked`` after its busy
    timeout; every job is idempotent and runs again at its next interval, so a
    warning with the driver's reason is logged instead of a traceback (whose
    SQL parameters must not reach the log either). Other errors, database
    faults such as a missing table included, propagate (APScheduler logs them).
    """

    def job() -> None:
        try:
            run()
        except OperationalError as exc:
            if not is_busy(exc):
                raise
            log.warning(
                "job %s skipped, the next run retries: database busy (%s)", name, busy_reason(exc)
            )

    return job


def build_scheduler(
    session_factory: sessionmaker[Session],
    clock: Callable[[], datetime],
    *,
    presence_stale_seconds: int,
    claim_skew_seconds: int,
    maintenance: Callable[[], None] | None = None,
    maintenance_interval_seconds: int = 30,
    jobs: Sequence[PeriodicJob] = (),
) -> BackgroundScheduler:
    """A scheduler with the hub's jobs registered (not yet started)."""
    scheduler = BackgroundScheduler(timezone="UTC")
    stale_after = timedelta(seconds=presence_stale_seconds)
    scheduler.add_job(
        skip_when_busy(
            "presence-sweep", partial(sweep_presence, session_factory, clock, stale_after)
        ),
        "interval",
        seconds=max(5, presence_stale_seconds // 4),
        id="presence-sweep",
        max_instances=1,
        coalesce=True,
    )
    purge = partial(purge_claim_nonces, session_factory, clock, claim_skew_seconds)
    scheduler.add_job(
        skip_when_busy("claim-nonce-purge", purge),
        "interval",
        seconds=max(60, claim_skew_seconds),
        id="claim-nonce-purge",
        max_instances=1,
        coalesce=True,
    )
    if maintenance is not None:
        # Entitlement expiry, seat timeouts, lease renewal, delivery retries.
        scheduler.add_job(
            skip_when_busy("manifest-maintenance", maintenance),
            "interval",
            seconds=maintenance_interval_seconds,
            id="manifest-maintenance",
            max_instances=1,
            coalesce=True,
        )
    for job in jobs:
        scheduler.add_job(
            skip_when_busy(job.job_id, job.run),
            "interval",
            seconds=job.seconds,
            id=job.job_id,
            max_instances=1,
            coalesce=True,
        )
    return scheduler
