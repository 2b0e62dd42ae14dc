"""The rollout engine: the periodic job and the per-device offer path (IO around policy).

:meth:`RolloutEngine.run` runs every few seconds (every hub worker may run it:
each step locks what it changes). In order, each in its own transaction and
publishing only after its commit:

1. time out active jobs past their deadline (``timed_out`` counts as a failure;
   the device gets ``fw_cancel`` with reason ``timed_out``);
2. for every running rollout: load its counts, :func:`~hub.rollouts.policy.decide`,
   and apply the decision (abort: withdraw every open job; pause; advance to the
   next wave; complete; or offer pending jobs of the current and earlier waves,
   only inside a maintenance window, a bounded number per pass).

:func:`offers_for_device` answers a device's ``fw_query``: resend the offer of
its active job, or offer its pending job now if the rollout would.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from hub.db.busy import busy_reason, is_busy
from hub.firmware.gate import Gate, entitled_devices
from hub.firmware.models import FirmwarePackage
from hub.mqtt.outbound import Outbound
from hub.rollouts import jobs, service
from hub.rollouts.models import FirmwareJob, Rollout
from hub.rollouts.policy import (
    ACTIVE_STATES,
    CANCELLABLE_STATES,
    Action,
    Counts,
    Snapshot,
    Thresholds,
    decide,
    in_windows,
    parse_window,
)

log = logging.getLogger(__name__)

OFFER_BATCH = 500
"""Most offers one rollout sends per engine pass (bounded work per transaction)."""
TIMEOUT_BATCH = 1000
BATCHES_PER_PASS = 10

Work = Callable[[Session, datetime], list[Outbound]]


def thresholds(rollout: Rollout) -> Thresholds:
    """The rollout's success criterion and failure threshold."""
    return Thresholds(
        success_percent=rollout.success_percent,
        failure_percent=rollout.failure_percent,
        failure_min_sample=rollout.failure_min_sample,
        failure_action=rollout.failure_action,
    )


def window_open(rollout: Rollout, now: datetime) -> bool:
    """Whether ``now`` is inside one of the rollout's maintenance windows (or it has none)."""
    return in_windows([parse_window(raw) for raw in rollout.windows], now)


def snapshot(session: Session, rollout: Rollout, wave_count: int, now: datetime) -> Snapshot:
    """What :func:`decide` needs about ``rollout`` at ``now``."""
    counts = service.state_counts(session, rollout.id)
    offerable = sum(
        by_state.get("pending", 0)
        for wave, by_state in counts.items()
        if wave <= rollout.current_wave
    )
    return Snapshot(
        wave=rollout.current_wave,
        wave_count=wave_count,
        current=Counts.of(counts.get(rollout.current_wave, {})),
        overall=service.overall(counts),
        offerable=offerable,
        base_failures=rollout.base_failures,
        base_finished=rollout.base_finished,
        in_window=window_open(rollout, now),
    )


def step_rollout(
    session: Session, rollout_id: str, now: datetime, *, offer_batch: int = OFFER_BATCH
) -> list[Outbound]:
    """Apply the engine's decisions to one running rollout until it has to wait."""
    rollout = session.scalar(select(Rollout).where(Rollout.id == rollout_id).with_for_update())
    if rollout is None or rollout.state != "running":
        return []
    waves = service.waves_of(session, rollout.id)
    for _ in range(len(waves) + 1):  # advancing may pass through empty waves
        decision = decide(snapshot(session, rollout, len(waves), now), thresholds(rollout))
        if decision.action is Action.ADVANCE:
            service.advance_wave(session, rollout, waves, now, actor=jobs.SYSTEM)
            continue
        if decision.action is Action.OFFER:
            return offer_pending(session, rollout, now, limit=offer_batch)
        if decision.action is Action.ABORT:
            out = service.withdraw(
                session, rollout, now, actor=jobs.SYSTEM, reason="rollout_aborted"
            )
            service.set_rollout_state(
                session, rollout, "aborted", now, actor=jobs.SYSTEM, reason=decision.reason
            )
            log.warning("rollout %s aborted: %s", rollout.id, decision.reason)
            return out
        if decision.action is Action.PAUSE:
            service.set_rollout_state(
                session, rollout, "paused", now, actor=jobs.SYSTEM, reason=decision.reason
            )
            log.warning("rollout %s paused: %s", rollout.id, decision.reason)
        elif decision.action is Action.COMPLETE:
            waves[rollout.current_wave].completed_at = now
            service.set_rollout_state(
                session, rollout, "completed", now, actor=jobs.SYSTEM, reason=decision.reason
            )
        return []
    return []


def offer_pending(
    session: Session, rollout: Rollout, now: datetime, *, limit: int
) -> list[Outbound]:
    """Offer up to ``limit`` pending jobs of the current and earlier waves (rows locked)."""
    pending = list(
        session.scalars(
            select(FirmwareJob)
            .where(
                FirmwareJob.rollout_id == rollout.id,
                FirmwareJob.retired_at.is_(None),
                FirmwareJob.state == "pending",
                FirmwareJob.wave <= rollout.current_wave,
            )
            .order_by(FirmwareJob.wave, FirmwareJob.id)
            .limit(limit)
            .with_for_update()
        )
    )
    return jobs.offer_jobs(session, pending, rollout, now, actor=jobs.SYSTEM)


def offers_for_device(
    session: Session,
    device_id: str,
    now: datetime,
    *,
    entitled: Callable[[FirmwarePackage], bool] | None = None,
    current: Sequence[FirmwareJob] | None = None,
) -> list[Outbound]:
    """What a device that just asked (``fw_query``) should get.

    Its active job's offer again (idempotent on the device), unless it lost
    the package's entitlement meanwhile (then the job is cancelled); else its
    pending job, offered now when its rollout is running, its wave has started
    and a maintenance window is open; else nothing.

    Args:
        session: The caller's transaction.
        device_id: The asking device.
        now: The time the gate is evaluated at.
        entitled: Whether the device passes a package's gate at ``now``; the MQTT
            handler passes one that evaluates every device of its batch at once.
            By default the gate is evaluated for this device alone.
        current: The device's jobs as :func:`current_jobs` loaded them earlier in
            this transaction (their state is re-read from the live objects); by
            default they are loaded now.
    """
    if current is None:
        current = current_jobs(session, [device_id]).get(device_id, [])
    current = [j for j in current if j.retired_at is None and j.state in _CURRENT_STATES]
    for job in current:
        if job.state in ACTIVE_STATES:
            return _resend(session, job, now, entitled)
    for job in current:
        rollout = session.get_one(Rollout, job.rollout_id)
        if (
            rollout.state == "running"
            and job.wave <= rollout.current_wave
            and _would_offer(session, rollout, now)
        ):
            return jobs.offer_jobs(session, [job], rollout, now, actor=f"device:{device_id}")
    return []


_CURRENT_STATES = ("pending", *ACTIVE_STATES)


def current_jobs(session: Session, device_ids: Sequence[str]) -> dict[str, list[FirmwareJob]]:
    """Each device's jobs that are not retired and pending or active, by id, rows locked."""
    found: dict[str, list[FirmwareJob]] = {}
    ids = sorted(set(device_ids))
    for start in range(0, len(ids), jobs.IN_CHUNK):
        rows = session.scalars(
            select(FirmwareJob)
            .where(
                FirmwareJob.device_id.in_(ids[start : start + jobs.IN_CHUNK]),
                FirmwareJob.retired_at.is_(None),
                FirmwareJob.state.in_(_CURRENT_STATES),
            )
            .order_by(FirmwareJob.id)
            .with_for_update()
        )
        for job in rows:
            found.setdefault(job.device_id, []).append(job)
    return found


def _would_offer(session: Session, rollout: Rollout, now: datetime) -> bool:
    """Whether the engine's decision for ``rollout`` now is to offer (window, thresholds)."""
    waves = len(service.waves_of(session, rollout.id))
    return (
        decide(snapshot(session, rollout, waves, now), thresholds(rollout)).action is Action.OFFER
    )


def _resend(
    session: Session,
    job: FirmwareJob,
    now: datetime,
    entitled: Callable[[FirmwarePackage], bool] | None,
) -> list[Outbound]:
    package = session.get_one(FirmwarePackage, job.package_id)
    if entitled is None:
        passes = job.device_id in entitled_devices(session, [job.device_id], Gate.of(package), now)
    else:
        passes = entitled(package)
    if passes:
        return [jobs.offer_outbound(job, package)]
    if job.state not in CANCELLABLE_STATES:
        return []  # past verified: the device finishes; chunks are refused anyway
    rollout = session.get_one(Rollout, job.rollout_id)
    return jobs.cancel_jobs(
        session, [job], now, actor=jobs.SYSTEM, reason="not_entitled",
        timeout_seconds=rollout.device_timeout_seconds,
    )  # fmt: skip


class RolloutEngine:
    """Runs the engine's passes in their own transactions and publishes after each commit."""

    def __init__(
        self,
        *,
        session_factory: sessionmaker[Session],
        clock: Callable[[], datetime],
        publish: Callable[[Sequence[Outbound]], None],
        offer_batch: int = OFFER_BATCH,
    ) -> None:
        self._session_factory = session_factory
        self._clock = clock
        self._publish = publish
        self._offer_batch = offer_batch

    def run(self) -> None:
        """One pass: time-outs, then every running rollout."""
        self._run(lambda s, now: jobs.time_out_due(s, now, limit=TIMEOUT_BATCH))
        with self._session_factory() as session:
            running = list(session.scalars(select(Rollout.id).where(Rollout.state == "running")))
        for rollout_id in running:
            self.step(rollout_id)

    def step(self, rollout_id: str) -> None:
        """Advance one rollout now (also called after REST start, resume and retry).

        Offers go out in transactions of at most ``offer_batch``, each published
        after its commit (the publish window is the back-pressure), up to
        :data:`BATCHES_PER_PASS` per pass.
        """
        for _ in range(BATCHES_PER_PASS):
            sent = self._run(
                lambda s, now: step_rollout(s, rollout_id, now, offer_batch=self._offer_batch)
            )
            if sent < self._offer_batch:
                return

    def _run(self, work: Work) -> int:
        """Run ``work`` in its own transaction; publish after the commit; how many were sent."""
        try:
            with self._session_factory() as session:
                out = work(session, self._clock())
                session.commit()
        except OperationalError as exc:
            if not is_busy(exc):  # a fault, not SQLite's lock timeout under write load
                log.error("firmware rollout pass failed: %s", busy_reason(exc))
                return 0
            log.warning(
                "firmware rollout pass skipped, the next retries: database busy (%s)",
                busy_reason(exc),
            )
            return 0
        except Exception:
            # A failed pass leaves the database as it was; the next pass retries.
            log.exception("firmware rollout pass failed")
            return 0
        if out:
            self._publish(out)
        return len(out)
