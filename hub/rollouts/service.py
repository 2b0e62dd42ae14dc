"""Rollout lifecycle: create, start (targets and waves), pause, resume, cancel, retry, views.

Services take a session and ``now``, raise :class:`~hub.errors.HubError`
subclasses, write audit events, and return what to publish after the caller's
commit. State changes of a rollout lock its row first, so REST calls, the
engine and several hub workers serialise on it.
"""

from __future__ import annotations

import hashlib
import uuid
from collections import defaultdict
from datetime import datetime
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session

from hub.audit.service import record
from hub.entitlements.models import Activation, CustomerAccount, Entitlement
from hub.errors import NotFound
from hub.firmware.errors import InvalidRollout, RolloutStateConflict
from hub.firmware.gate import Gate, entitled_devices
from hub.firmware.models import DeviceFirmware, FirmwarePackage
from hub.mqtt.outbound import Outbound
from hub.registry.models import Device
from hub.rollouts import jobs
from hub.rollouts.models import FirmwareJob, Rollout, RolloutWave
from hub.rollouts.policy import (
    ACTIVE_STATES,
    FAILURE_STATES,
    Counts,
    WaveSpec,
    parse_window,
    plan_waves,
)
from hub.rollouts.schemas import RolloutCreate

BUSY_STATES = ("pending", *ACTIVE_STATES)
INSERT_CHUNK = 1000


class UnknownPackage(InvalidRollout):
    """The rollout names a package this tenant does not have."""

    code = "unknown_package"


def _audit(
    session: Session, rollout: Rollout, actor: str, action: str, now: datetime, **detail: Any
) -> None:
    record(
        session,
        tenant_id=rollout.tenant_id,
        actor=actor,
        action=f"firmware.rollout.{action}",
        target_type="firmware_rollout",
        target_id=rollout.id,
        now=now,
        detail={"state": rollout.state, **detail},
    )


def get_rollout(
    session: Session, tenant_id: str, rollout_id: str, *, lock: bool = False
) -> Rollout:
    """The tenant's rollout (row-locked with ``lock``).

    Raises:
        NotFound: no such rollout for this tenant.
    """
    query = select(Rollout).where(Rollout.id == rollout_id, Rollout.tenant_id == tenant_id)
    rollout = session.scalar(query.with_for_update() if lock else query)
    if rollout is None:
        raise NotFound(f"rollout {rollout_id} not found")
    return rollout


def create_rollout(
    session: Session, *, tenant_id: str, actor: str, now: datetime, data: RolloutCreate
) -> Rollout:
    """Create a ``draft`` rollout of a package.

    Raises:
        UnknownPackage: the package is not the tenant's.
        InvalidRollout: the account filter names an unknown account, or a window is invalid.
    """
    package = session.get(FirmwarePackage, data.package_id)
    if package is None or package.tenant_id != tenant_id:
        raise UnknownPackage(f"firmware package {data.package_id} not found")
    account_id = data.filter.account_id
    if account_id is not None:
        account = session.get(CustomerAccount, account_id)
        if account is None or account.tenant_id != tenant_id:
            raise InvalidRollout(f"account {account_id} not found")
    windows = [window.model_dump() for window in data.maintenance_windows]
    for window in windows:
        parse_window(window)
    rollout = Rollout(
        id=str(uuid.uuid4()),
        tenant_id=tenant_id,
        name=data.name,
        package_id=package.id,
        device_class_id=package.device_class_id,
        state="draft",
        target_filter=data.filter.model_dump(),
        success_percent=data.success_percent,
        failure_percent=data.failure_percent,
        failure_min_sample=data.failure_min_sample,
        failure_action=data.failure_action,
        device_timeout_seconds=data.device_timeout_seconds,
        windows=windows,
        current_wave=0,
        target_count=0,
        skipped={},
        base_failures=0,
        base_finished=0,
        created_at=now,
        updated_at=now,
    )
    session.add(rollout)
    for number, wave in enumerate(data.waves):
        session.add(
            RolloutWave(
                rollout_id=rollout.id,
                number=number,
                percent=wave.percent,
                size=wave.size,
                planned=0,
            )
        )
    _audit(session, rollout, actor, "create", now, package_id=package.id, version=package.version)
    return rollout


def waves_of(session: Session, rollout_id: str) -> list[RolloutWave]:
    """The rollout's waves, in order."""
    return list(
        session.scalars(
            select(RolloutWave)
            .where(RolloutWave.rollout_id == rollout_id)
            .order_by(RolloutWave.number)
        )
    )


# --- targets --------------------------------------------------------------------------------


def _account_devices(session: Session, tenant_id: str, account_id: str) -> set[str]:
    return set(
        session.scalars(
            select(Activation.device_id)
            .join(Entitlement, Entitlement.id == Activation.entitlement_id)
            .where(
                Entitlement.tenant_id == tenant_id,
                Entitlement.account_id == account_id,
                Activation.deactivated_at.is_(None),
            )
        )
    )


def _busy_devices(session: Session, tenant_id: str) -> set[str]:
    """Devices with an unfinished job in a rollout that is not over."""
    return set(
        session.scalars(
            select(FirmwareJob.device_id)
            .join(Rollout, Rollout.id == FirmwareJob.rollout_id)
            .where(
                FirmwareJob.tenant_id == tenant_id,
                FirmwareJob.retired_at.is_(None),
                FirmwareJob.state.in_(BUSY_STATES),
                Rollout.state.in_(("running", "paused", "completed")),
            )
        )
    )


def select_targets(
    session: Session, rollout: Rollout, package: FirmwarePackage, now: datetime
) -> tuple[list[str], dict[str, int]]:
    """The devices a rollout targets at ``now``, and how many were skipped and why.

    Candidates: claimed devices of the package's class matching the filter.
    Skipped: ``up_to_date`` (installed sequence at or above the package's),
    ``busy`` (in another unfinished rollout), ``not_entitled`` (the gate).
    """
    flt = rollout.target_filter
    rows = session.execute(
        select(
            Device.id, Device.tags, DeviceFirmware.installed_seq, DeviceFirmware.installed_version
        )
        .outerjoin(DeviceFirmware, DeviceFirmware.device_id == Device.id)
        .where(
            Device.tenant_id == rollout.tenant_id,
            Device.device_class_id == package.device_class_id,
            Device.status == "claimed",
        )
    ).all()
    tags = set(flt.get("tags") or ())
    versions = set(flt.get("current_versions") or ())
    allowed = (
        _account_devices(session, rollout.tenant_id, flt["account_id"])
        if flt.get("account_id")
        else None
    )
    skipped: dict[str, int] = defaultdict(int)
    candidates: list[str] = []
    for device_id, device_tags, seq, version in rows:
        if not tags <= set(device_tags or ()):
            continue
        if versions and version not in versions:
            continue
        if allowed is not None and device_id not in allowed:
            continue
        if (seq or 0) >= package.sequence:
            skipped["up_to_date"] += 1
            continue
        candidates.append(device_id)
    busy = _busy_devices(session, rollout.tenant_id)
    skipped["busy"] = sum(1 for d in candidates if d in busy)
    free = [d for d in candidates if d not in busy]
    entitled = entitled_devices(session, free, Gate.of(package), now)
    skipped["not_entitled"] = len(free) - len(entitled)
    order = sorted(entitled, key=lambda d: hashlib.sha256(f"{rollout.id}:{d}".encode()).digest())
    return order, {k: v for k, v in skipped.items() if v}


def start_rollout(
    session: Session, *, tenant_id: str, actor: str, now: datetime, rollout_id: str
) -> Rollout:
    """Select the targets, split them into waves, create their jobs and start wave 1.

    Devices are spread over waves in a pseudo-random but reproducible order
    (by a hash of rollout and device id). With no target the rollout completes
    at once. Offers go out on the engine's next pass (inside a maintenance
    window).

    Raises:
        NotFound: no such rollout.
        RolloutStateConflict: the rollout is not a draft.
    """
    rollout = get_rollout(session, tenant_id, rollout_id, lock=True)
    if rollout.state != "draft":
        raise RolloutStateConflict(f"only a draft rollout can start (it is {rollout.state})")
    package = session.get_one(FirmwarePackage, rollout.package_id)
    targets, skipped = select_targets(session, rollout, package, now)
    waves = waves_of(session, rollout.id)
    planned = plan_waves([WaveSpec(w.percent, w.size) for w in waves], len(targets))
    rows: list[dict[str, Any]] = []
    for wave, size in zip(waves, planned, strict=True):
        wave.planned = size
        start = len(rows)
        rows.extend(_job_row(rollout, d, wave.number, now) for d in targets[start : start + size])
    for first in range(0, len(rows), INSERT_CHUNK):  # bulk: one statement per chunk
        session.execute(insert(FirmwareJob), rows[first : first + INSERT_CHUNK])
    rollout.target_count = len(targets)
    rollout.skipped = skipped
    rollout.started_at = now
    rollout.updated_at = now
    waves[0].started_at = now
    if targets:
        rollout.state = "running"
    else:
        rollout.state, rollout.finished_at = "completed", now
        rollout.state_reason = "no device needs this package"
    _audit(
        session, rollout, actor, "start", now, targets=len(targets), skipped=skipped, waves=planned
    )
    return rollout


def _job_row(rollout: Rollout, device_id: str, wave: int, now: datetime) -> dict[str, Any]:
    return {
        "job_id": jobs.new_job_id(),
        "tenant_id": rollout.tenant_id,
        "rollout_id": rollout.id,
        "package_id": rollout.package_id,
        "device_id": device_id,
        "wave": wave,
        "attempt": 1,
        "state": "pending",
        "created_at": now,
        "updated_at": now,
    }


def _new_job(
    rollout: Rollout, device_id: str, wave: int, attempt: int, now: datetime
) -> FirmwareJob:
    return FirmwareJob(
        job_id=jobs.new_job_id(),
        tenant_id=rollout.tenant_id,
        rollout_id=rollout.id,
        package_id=rollout.package_id,
        device_id=device_id,
        wave=wave,
        attempt=attempt,
        state="pending",
        created_at=now,
        updated_at=now,
    )


# --- counts ---------------------------------------------------------------------------------


def state_counts(session: Session, rollout_id: str) -> dict[int, dict[str, int]]:
    """Current jobs of a rollout counted by wave and state (one query)."""
    counts: dict[int, dict[str, int]] = defaultdict(dict)
    for wave, state, count in session.execute(
        select(FirmwareJob.wave, FirmwareJob.state, func.count())
        .where(FirmwareJob.rollout_id == rollout_id, FirmwareJob.retired_at.is_(None))
        .group_by(FirmwareJob.wave, FirmwareJob.state)
    ):
        counts[wave][state] = count
    return counts


def overall(counts: dict[int, dict[str, int]]) -> Counts:
    """Every wave's counts together."""
    merged: dict[str, int] = defaultdict(int)
    for by_state in counts.values():
        for state, count in by_state.items():
            merged[state] += count
    return Counts.of(merged)


def rebase(session: Session, rollout: Rollout) -> None:
    """Make the failure threshold count only what happens from now on."""
    total = overall(state_counts(session, rollout.id))
    rollout.base_failures = total.failed
    rollout.base_finished = total.finished


# --- operator actions -----------------------------------------------------------------------


def pause_rollout(
    session: Session,
    *,
    tenant_id: str,
    actor: str,
    now: datetime,
    rollout_id: str,
    reason: str | None,
) -> Rollout:
    """Stop offering (devices already working go on, with their deadlines).

    Raises:
        RolloutStateConflict: the rollout is not running.
    """
    rollout = get_rollout(session, tenant_id, rollout_id, lock=True)
    if rollout.state != "running":
        raise RolloutStateConflict(f"only a running rollout can pause (it is {rollout.state})")
    set_rollout_state(
        session, rollout, "paused", now, actor=actor, reason=reason or "paused by operator"
    )
    return rollout


def resume_rollout(
    session: Session, *, tenant_id: str, actor: str, now: datetime, rollout_id: str
) -> Rollout:
    """Resume a paused rollout; the failure threshold restarts from the current counts.

    A rollout paused because a wave finished below its success criterion moves
    on to the next wave: resuming is the operator's decision to accept it.

    Raises:
        RolloutStateConflict: the rollout is not paused.
    """
    rollout = get_rollout(session, tenant_id, rollout_id, lock=True)
    if rollout.state != "paused":
        raise RolloutStateConflict(f"only a paused rollout can resume (it is {rollout.state})")
    rebase(session, rollout)
    counts = state_counts(session, rollout.id).get(rollout.current_wave, {})
    current = Counts.of(counts)
    waves = waves_of(session, rollout.id)
    if current.pending == 0 and current.active == 0 and rollout.current_wave < len(waves) - 1:
        advance_wave(session, rollout, waves, now, actor=actor)
    set_rollout_state(session, rollout, "running", now, actor=actor, reason=None, action="resume")
    return rollout


def cancel_rollout(
    session: Session,
    *,
    tenant_id: str,
    actor: str,
    now: datetime,
    rollout_id: str,
    reason: str | None,
) -> tuple[Rollout, list[Outbound]]:
    """Cancel: no more offers; pending jobs are dropped and offered ones withdrawn.

    Raises:
        RolloutStateConflict: the rollout is already over.
    """
    rollout = get_rollout(session, tenant_id, rollout_id, lock=True)
    if rollout.state not in ("draft", "running", "paused"):
        raise RolloutStateConflict(f"a {rollout.state} rollout cannot be cancelled")
    out = withdraw(session, rollout, now, actor=actor, reason="rollout_cancelled")
    set_rollout_state(
        session, rollout, "cancelled", now, actor=actor, reason=reason or "cancelled by operator"
    )
    return rollout, out


def withdraw(
    session: Session, rollout: Rollout, now: datetime, *, actor: str, reason: str
) -> list[Outbound]:
    """Cancel every pending and cancellable job of the rollout (rows locked)."""
    open_jobs = session.scalars(
        select(FirmwareJob)
        .where(
            FirmwareJob.rollout_id == rollout.id,
            FirmwareJob.retired_at.is_(None),
            FirmwareJob.state.in_(("pending", *ACTIVE_STATES)),
        )
        .with_for_update()
    )
    return jobs.cancel_jobs(
        session,
        open_jobs,
        now,
        actor=actor,
        reason=reason,
        timeout_seconds=rollout.device_timeout_seconds,
    )


def retry_failed(
    session: Session, *, tenant_id: str, actor: str, now: datetime, rollout_id: str
) -> tuple[Rollout, int]:
    """Give every failed, reverted or timed-out device a new attempt (a fresh job id).

    The old job is kept (retired) with its reports. A completed rollout runs
    again; the failure threshold restarts from the new counts.

    Raises:
        RolloutStateConflict: the rollout is a draft, cancelled or aborted.
    """
    rollout = get_rollout(session, tenant_id, rollout_id, lock=True)
    if rollout.state not in ("running", "paused", "completed"):
        raise RolloutStateConflict(f"a {rollout.state} rollout cannot retry devices")
    failed = list(
        session.scalars(
            select(FirmwareJob)
            .where(
                FirmwareJob.rollout_id == rollout.id,
                FirmwareJob.retired_at.is_(None),
                FirmwareJob.state.in_(FAILURE_STATES),
            )
            .with_for_update()
        )
    )
    for job in failed:
        job.retired_at = now
        job.updated_at = now
    session.flush()  # the partial unique index admits the new attempt only now
    for job in failed:
        session.add(_new_job(rollout, job.device_id, job.wave, job.attempt + 1, now))
    session.flush()
    rebase(session, rollout)
    if failed and rollout.state == "completed":
        rollout.finished_at = None
        set_rollout_state(
            session, rollout, "running", now, actor=actor, reason=None, action="reopen"
        )
    rollout.updated_at = now
    _audit(session, rollout, actor, "retry", now, retried=len(failed))
    return rollout, len(failed)


# --- shared state changes -------------------------------------------------------------------


def set_rollout_state(
    session: Session,
    rollout: Rollout,
    state: str,
    now: datetime,
    *,
    actor: str,
    reason: str | None,
    action: str | None = None,
) -> None:
    """Change a rollout's state (and reason), audited."""
    previous = rollout.state
    rollout.state = state
    rollout.state_reason = reason
    rollout.updated_at = now
    if state in ("completed", "aborted", "cancelled"):
        rollout.finished_at = now
    _audit(session, rollout, actor, action or state, now, previous=previous, reason=reason)


def advance_wave(
    session: Session, rollout: Rollout, waves: list[RolloutWave], now: datetime, *, actor: str
) -> None:
    """Close the current wave and open the next one."""
    waves[rollout.current_wave].completed_at = now
    rollout.current_wave += 1
    waves[rollout.current_wave].started_at = now
    rollout.updated_at = now
    _audit(session, rollout, actor, "advance", now, wave=rollout.current_wave + 1)
