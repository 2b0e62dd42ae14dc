"""Per-device firmware jobs: state changes, offers, cancels, time-outs (the IO around policy).

Every state change goes through :func:`set_state`, which keeps the deadline
invariant (an active job always has one, a finished job never) and writes an
audit event in the same transaction. Functions return the messages to publish
after the caller's commit; none of them commits or publishes.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from hub.audit.service import record
from hub.firmware.gate import Gate, entitled_devices
from hub.firmware.installed import installed_seqs
from hub.firmware.models import FirmwarePackage
from hub.mqtt.outbound import Outbound
from hub.registry.models import Device
from hub.rollouts.models import FirmwareJob, Rollout
from hub.rollouts.policy import ACTIVE_STATES, CANCELLABLE_STATES, TERMINAL_STATES
from protocols import topics
from protocols.firmware_messages import JOB_PREFIX, FirmwareCancel, FirmwareOffer
from protocols.messages import encode_message

SYSTEM = "system"
IN_CHUNK = 900


def new_job_id() -> str:
    """A fresh job id: ``job-`` and 24 lowercase hex digits."""
    return JOB_PREFIX + secrets.token_hex(12)


def http_path(job_id: str) -> str:
    """Where a device with IP access fetches the job's payload (ranged GET)."""
    return f"/api/v1/device/firmware/{job_id}/payload"


def offer_outbound(job: FirmwareJob, package: FirmwarePackage) -> Outbound:
    """The ``fw_offer`` for ``job``."""
    offer = FirmwareOffer(
        job_id=job.job_id,
        envelope=package.envelope,
        chunk_size=package.chunk_size,
        http_path=http_path(job.job_id),
    )
    topic = topics.device_down(job.device_id, topics.DownKind.FIRMWARE)
    return Outbound(topic, encode_message(offer))


def cancel_outbound(device_id: str, job_id: str, reason: str) -> Outbound:
    """A ``fw_cancel`` of ``job_id`` for ``device_id``."""
    topic = topics.device_down(device_id, topics.DownKind.FIRMWARE)
    return Outbound(topic, encode_message(FirmwareCancel(job_id=job_id, reason=reason[:256])))


def set_state(
    session: Session,
    job: FirmwareJob,
    state: str,
    now: datetime,
    *,
    actor: str,
    timeout_seconds: int,
    reason: str | None = None,
) -> None:
    """Move ``job`` to ``state``, renew or clear its deadline, and audit the change."""
    previous = job.state
    job.state = state
    job.updated_at = now
    if reason is not None:
        job.reason = reason
    if state in ACTIVE_STATES:
        job.deadline_at = now + timedelta(seconds=timeout_seconds)
        job.finished_at = None
    else:
        job.deadline_at = None
        job.finished_at = now if state in TERMINAL_STATES else None
    if state == "offered":
        job.offered_at = now
    record(
        session,
        tenant_id=job.tenant_id,
        actor=actor,
        action="firmware.job.state",
        target_type="firmware_job",
        target_id=job.job_id,
        now=now,
        detail={
            "from": previous,
            "to": state,
            "device_id": job.device_id,
            "rollout_id": job.rollout_id,
            "reason": reason,
        },
    )


def _refusal(
    device: Device | None,
    package: FirmwarePackage,
    installed: int,
    entitled: bool,
) -> str | None:
    """Why a pending job must not be offered (it is cancelled), or ``None``."""
    if device is None or device.status != "claimed":
        return "device_not_claimed"
    if device.device_class_id != package.device_class_id:
        return "wrong_class"
    if installed >= package.sequence:
        return "already_installed"
    if not entitled:
        return "not_entitled"
    return None


def offer_jobs(
    session: Session, jobs: Sequence[FirmwareJob], rollout: Rollout, now: datetime, *, actor: str
) -> list[Outbound]:
    """Offer pending ``jobs`` of ``rollout``, or cancel those that must not get it.

    Checked per job at ``now``: the device is claimed and of the package's
    class, its installed sequence is below the package's (never a downgrade or
    a reinstall), and it passes the entitlement gate.
    """
    if not jobs:
        return []
    package = session.get_one(FirmwarePackage, rollout.package_id)
    device_ids = sorted({job.device_id for job in jobs})
    devices = _devices(session, device_ids)
    installed = installed_seqs(session, device_ids)
    entitled = entitled_devices(session, device_ids, Gate.of(package), now)
    out: list[Outbound] = []
    for job in jobs:
        refusal = _refusal(
            devices.get(job.device_id),
            package,
            installed.get(job.device_id, 0),
            job.device_id in entitled,
        )
        timeout = rollout.device_timeout_seconds
        if refusal is not None:
            set_state(
                session, job, "cancelled", now, actor=actor, timeout_seconds=timeout, reason=refusal
            )
            continue
        set_state(session, job, "offered", now, actor=actor, timeout_seconds=timeout)
        out.append(offer_outbound(job, package))
    return out


def _devices(session: Session, device_ids: list[str]) -> dict[str, Device]:
    found: dict[str, Device] = {}
    for start in range(0, len(device_ids), IN_CHUNK):
        chunk = device_ids[start : start + IN_CHUNK]
        found.update((d.id, d) for d in session.scalars(select(Device).where(Device.id.in_(chunk))))
    return found


def cancel_jobs(
    session: Session,
    jobs: Iterable[FirmwareJob],
    now: datetime,
    *,
    actor: str,
    reason: str,
    timeout_seconds: int,
) -> list[Outbound]:
    """Withdraw jobs: pending ones silently, offered ones up to ``verified`` with ``fw_cancel``.

    Jobs at ``installing`` or ``rebooting`` are left to finish (and time out if
    they never report); finished jobs are not touched.
    """
    out: list[Outbound] = []
    for job in jobs:
        if job.state == "pending":
            set_state(
                session,
                job,
                "cancelled",
                now,
                actor=actor,
                timeout_seconds=timeout_seconds,
                reason=reason,
            )
        elif job.state in CANCELLABLE_STATES:
            set_state(
                session,
                job,
                "cancelled",
                now,
                actor=actor,
                timeout_seconds=timeout_seconds,
                reason=reason,
            )
            out.append(cancel_outbound(job.device_id, job.job_id, reason))
    return out


def time_out_due(session: Session, now: datetime, *, limit: int = 1000) -> list[Outbound]:
    """Time out active jobs whose deadline has passed (a failure), and tell their devices.

    Rows are locked and the condition rechecked under the lock, so a report
    committed meanwhile wins over the time-out.
    """
    jobs = list(
        session.scalars(
            select(FirmwareJob)
            .where(FirmwareJob.state.in_(ACTIVE_STATES), FirmwareJob.deadline_at < now)
            .order_by(FirmwareJob.deadline_at)
            .limit(limit)
            .with_for_update()
        )
    )
    out: list[Outbound] = []
    for job in jobs:
        reason = f"no progress reported in time (last state {job.state})"
        set_state(session, job, "timed_out", now, actor=SYSTEM, timeout_seconds=0, reason=reason)
        out.append(cancel_outbound(job.device_id, job.job_id, "timed_out"))
    return out
