"""MQTT delivery: the batch handler for ``d/{id}/up/firmware``.

One call handles every firmware message of an MQTT batch, inside the batch's
transaction (replies are published after its commit):

- ``fw_query``: record the installed sequence; cancel a named job that is no
  longer active; resend the offer of the device's active job, or offer its
  pending job now if the rollout would (:func:`hub.rollouts.engine.offers_for_device`).
- ``fw_chunk_req``: refuse (``ErrorReply`` on ``d/{id}/down/error``) an unknown
  job or another device's (``unknown_job``), a job not in progress
  (``job_not_active``), a device failing the entitlement gate *now*
  (``not_entitled``), an index past the last chunk (``chunk_out_of_range``);
  otherwise answer ``fw_chunk`` messages read from the blob store. ``count`` is
  capped by the chunk count and by a per-batch byte budget (a device that got
  fewer chunks than it asked for re-requests after its timeout). No download
  state is kept.
- ``fw_report``: store each (device, key) once, move the job forward
  (:func:`hub.rollouts.policy.next_job_state`), and acknowledge the keys in one
  ``fw_report_ack`` per device after the commit; a replayed key is acknowledged
  again without being re-applied.

Every item is validated before its first write, so a refused item writes
nothing and the rest of the batch goes on.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from hub.firmware.blobs import BlobStore
from hub.firmware.errors import BlobError
from hub.firmware.gate import Gate, entitled_devices
from hub.firmware.installed import INT64_MAX, note_confirmed, note_reported
from hub.firmware.models import FirmwarePackage
from hub.firmware.wire import chunk_payloads
from hub.mqtt.outbound import Outbound
from hub.registry.models import Device
from hub.rollouts import engine, jobs
from hub.rollouts.models import FirmwareJob, FirmwareReport, Rollout
from hub.rollouts.policy import ACTIVE_STATES, next_job_state
from protocols import topics
from protocols.firmware_messages import (
    MAX_ACK_KEYS,
    FirmwareChunkRequest,
    FirmwareQuery,
    FirmwareReportAck,
)
from protocols.firmware_messages import (
    FirmwareReport as ReportMessage,
)
from protocols.messages import ErrorReply, Message, encode_message

log = logging.getLogger(__name__)

BATCH_BYTES = 8 * 1024 * 1024
"""Most payload bytes one batch answers with (bounds memory and the publish window)."""
IN_CHUNK = 900
PACKAGE_CACHE = 64
"""Packages (with their envelopes, up to 32 KiB each) kept in memory by one handler."""


class Refused(Exception):
    """One message is refused with ``code`` (sent to the device as an ``ErrorReply``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class _Batch:
    """What one handler call loaded and produced."""

    now: datetime
    devices: dict[str, Device]
    jobs: dict[str, FirmwareJob]
    seen_keys: set[tuple[str, str]]
    budget: int
    out: list[Outbound] = field(default_factory=list)
    acks: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    entitled: dict[str, set[str]] = field(default_factory=dict)


class FirmwareHandler:
    """The :class:`hub.plugins.BatchHandler` of the ``firmware`` topic kind."""

    kind = topics.UpKind.FIRMWARE.value

    def __init__(self, *, store: BlobStore, batch_bytes: int = BATCH_BYTES) -> None:
        self._store = store
        self._batch_bytes = batch_bytes
        self._packages: dict[str, FirmwarePackage] = {}

    def handle(
        self, session: Session, items: Sequence[tuple[str, Message]], now: datetime
    ) -> list[Outbound]:
        """Apply the batch's firmware messages in arrival order; returns the replies."""
        batch = self._load(session, items, now)
        for device_id, message in items:
            try:
                self._one(session, batch, device_id, message)
            except Refused as exc:
                log.info("firmware message from %s refused: %s: %s", device_id, exc.code, exc)
                batch.out.append(_error(device_id, exc.code, str(exc)))
        for device_id, keys in batch.acks.items():
            topic = topics.device_down(device_id, topics.DownKind.FIRMWARE)
            for start in range(0, len(keys), MAX_ACK_KEYS):
                ack = FirmwareReportAck(keys=tuple(keys[start : start + MAX_ACK_KEYS]))
                batch.out.append(Outbound(topic, encode_message(ack)))
        return batch.out

    def _one(self, session: Session, batch: _Batch, device_id: str, message: Message) -> None:
        # The router passes only senders it found claimed in this transaction.
        if isinstance(message, FirmwareChunkRequest):
            self._chunks(session, batch, device_id, message)
        elif device_id not in batch.devices:
            return  # unclaimed meanwhile (a disable racing the batch)
        elif isinstance(message, ReportMessage):
            self._report(session, batch, device_id, message)
        elif isinstance(message, FirmwareQuery):
            self._query(session, batch, device_id, message)
        else:
            raise Refused(
                "invalid_message", f"a {message.TYPE!r} message does not belong on firmware"
            )

    # --- loading ----------------------------------------------------------------------------

    def _load(
        self, session: Session, items: Sequence[tuple[str, Message]], now: datetime
    ) -> _Batch:
        # Chunk requests only read; queries and reports write, so only they need
        # the device rows, and the jobs that reports move are locked.
        writers = sorted({d for d, m in items if not isinstance(m, FirmwareChunkRequest)})
        reported = {m.job_id for _, m in items if isinstance(m, ReportMessage)}
        requested = {m.job_id for _, m in items if isinstance(m, FirmwareChunkRequest)}
        keys = sorted({m.key for _, m in items if isinstance(m, ReportMessage)})
        jobs = _jobs(session, sorted(requested - reported), lock=False)
        jobs.update(_jobs(session, sorted(reported), lock=True))
        return _Batch(
            now=now,
            devices=_claimed(session, writers),
            jobs=jobs,
            seen_keys=_seen(session, writers, keys),
            budget=self._batch_bytes,
        )

    def _package(self, session: Session, package_id: str) -> FirmwarePackage:
        # Packages never change once committed: cache them for the process.
        package = self._packages.get(package_id)
        if package is None:
            package = session.get_one(FirmwarePackage, package_id)
            session.expunge(package)
            if len(self._packages) >= PACKAGE_CACHE:
                self._packages.pop(next(iter(self._packages)))  # the oldest entry
            self._packages[package_id] = package
        return package

    def _entitled(
        self, session: Session, batch: _Batch, package: FirmwarePackage, device_id: str
    ) -> bool:
        gate = Gate.of(package)
        if gate.is_open:
            return True
        if package.id not in batch.entitled:
            wanted = [j.device_id for j in batch.jobs.values() if j.package_id == package.id]
            batch.entitled[package.id] = entitled_devices(session, wanted, gate, batch.now)
        return device_id in batch.entitled[package.id]

    # --- chunk requests ---------------------------------------------------------------------

    def _active_job(self, batch: _Batch, device_id: str, job_id: str) -> FirmwareJob:
        job = batch.jobs.get(job_id)
        if job is None or job.device_id != device_id:
            raise Refused("unknown_job", f"no firmware job {job_id} for this device")
        if job.retired_at is not None or job.state not in ACTIVE_STATES:
            raise Refused("job_not_active", f"job {job_id} is {job.state}, not in progress")
        return job

    def _chunks(
        self, session: Session, batch: _Batch, device_id: str, request: FirmwareChunkRequest
    ) -> None:
        job = self._active_job(batch, device_id, request.job_id)
        package = self._package(session, job.package_id)
        if not self._entitled(session, batch, package, device_id):
            raise Refused("not_entitled", f"this device is not entitled to job {job.job_id}")
        if request.index >= package.chunk_count:
            raise Refused(
                "chunk_out_of_range",
                f"chunk {request.index} of job {job.job_id}: the payload has"
                f" {package.chunk_count} chunks (0..{package.chunk_count - 1})",
            )
        affordable = batch.budget // package.chunk_size
        count = min(request.count, package.chunk_count - request.index, affordable)
        if count <= 0:
            log.info("firmware batch budget spent; chunk request of %s deferred", device_id)
            return
        self._send_chunks(batch, job, package, request.index, count)

    def _send_chunks(
        self, batch: _Batch, job: FirmwareJob, package: FirmwarePackage, index: int, count: int
    ) -> None:
        start = index * package.chunk_size
        end = min(package.size, (index + count) * package.chunk_size)
        try:
            data = self._store.read_range(package.blob_key, start, end)
        except BlobError:
            log.exception("firmware payload of package %s unreadable", package.id)
            return  # the device re-requests; nothing to tell it that would help
        batch.budget -= len(data)
        topic = topics.device_down(job.device_id, topics.DownKind.FIRMWARE)
        batch.out.extend(
            Outbound(topic, payload)
            for payload in chunk_payloads(job.job_id, index, data, package.chunk_size)
        )

    # --- reports ----------------------------------------------------------------------------

    def _report(
        self, session: Session, batch: _Batch, device_id: str, report: ReportMessage
    ) -> None:
        job = batch.jobs.get(report.job_id)
        if job is None or job.device_id != device_id:
            raise Refused("unknown_job", f"no firmware job {report.job_id} for this device")
        if report.at > INT64_MAX or (report.installed_seq or 0) > INT64_MAX:
            raise Refused("invalid_message", "at and installed_seq must fit 63 bits")
        if (device_id, report.key) in batch.seen_keys:
            batch.acks[device_id].append(report.key)  # a replay: acknowledged again only
            return
        batch.seen_keys.add((device_id, report.key))
        applied = self._apply(session, batch, job, report)
        session.add(
            FirmwareReport(
                tenant_id=job.tenant_id,
                device_id=device_id,
                key=report.key,
                job_id=job.job_id,
                step=report.step,
                at=report.at,
                reason=report.reason,
                installed_seq=report.installed_seq,
                applied=applied,
                received_at=batch.now,
            )
        )
        batch.acks[device_id].append(report.key)

    def _apply(
        self, session: Session, batch: _Batch, job: FirmwareJob, report: ReportMessage
    ) -> bool:
        state = next_job_state(job.state, report.step)
        if state is None:
            return False
        rollout = session.get_one(Rollout, job.rollout_id)
        failure = state in ("failed", "reverted")
        jobs.set_state(
            session, job, state, batch.now, actor=f"device:{job.device_id}",
            timeout_seconds=rollout.device_timeout_seconds,
            reason=(report.reason or report.step) if failure else None,
        )  # fmt: skip
        job.last_step = report.step
        device = batch.devices[job.device_id]
        if state == "confirmed":
            note_confirmed(
                session,
                device_id=device.id,
                package=self._package(session, job.package_id),
                now=batch.now,
            )
        elif report.installed_seq is not None:
            note_reported(
                session, device_id=device.id, tenant_id=device.tenant_id,
                device_class_id=device.device_class_id, seq=report.installed_seq, now=batch.now,
            )  # fmt: skip
        return True

    # --- queries ----------------------------------------------------------------------------

    def _query(self, session: Session, batch: _Batch, device_id: str, query: FirmwareQuery) -> None:
        if query.installed_seq > INT64_MAX:
            raise Refused("invalid_message", "installed_seq must fit 63 bits")
        device = batch.devices[device_id]
        note_reported(
            session, device_id=device_id, tenant_id=device.tenant_id,
            device_class_id=device.device_class_id, seq=query.installed_seq, now=batch.now,
        )  # fmt: skip
        if query.job_id is not None:
            reason = self._stale_reason(session, device_id, query.job_id)
            if reason is not None:
                batch.out.append(jobs.cancel_outbound(device_id, query.job_id, reason))
        batch.out.extend(engine.offers_for_device(session, device_id, batch.now))

    def _stale_reason(self, session: Session, device_id: str, job_id: str) -> str | None:
        """Why the job a device names is no longer one to work on, or ``None``."""
        job = session.scalar(select(FirmwareJob).where(FirmwareJob.job_id == job_id))
        if job is None or job.device_id != device_id:
            return "unknown_job"
        if job.retired_at is not None:
            return "superseded"
        if job.state in ACTIVE_STATES:
            return None
        return job.state


def _claimed(session: Session, device_ids: list[str]) -> dict[str, Device]:
    found: dict[str, Device] = {}
    for start in range(0, len(device_ids), IN_CHUNK):
        chunk = device_ids[start : start + IN_CHUNK]
        rows = session.scalars(
            select(Device).where(Device.id.in_(chunk), Device.status == "claimed")
        )
        found.update((device.id, device) for device in rows)
    return found


def _jobs(session: Session, job_ids: list[str], *, lock: bool) -> dict[str, FirmwareJob]:
    found: dict[str, FirmwareJob] = {}
    for start in range(0, len(job_ids), IN_CHUNK):
        query = select(FirmwareJob).where(FirmwareJob.job_id.in_(job_ids[start : start + IN_CHUNK]))
        rows = session.scalars(query.with_for_update() if lock else query)
        found.update((job.job_id, job) for job in rows)
    return found


def _seen(session: Session, device_ids: list[str], keys: list[str]) -> set[tuple[str, str]]:
    """The (device, key) pairs of this batch's reports that are already stored."""
    seen: set[tuple[str, str]] = set()
    for low in range(0, len(device_ids), IN_CHUNK // 2):
        devices = device_ids[low : low + IN_CHUNK // 2]
        for start in range(0, len(keys), IN_CHUNK // 2):
            rows = session.execute(
                select(FirmwareReport.device_id, FirmwareReport.key).where(
                    FirmwareReport.device_id.in_(devices),
                    FirmwareReport.key.in_(keys[start : start + IN_CHUNK // 2]),
                )
            )
            seen.update((device_id, key) for device_id, key in rows)
    return seen


def _error(device_id: str, code: str, message: str) -> Outbound:
    reply = ErrorReply(
        code=code,
        message=message[:256],
        ref=topics.device_up(device_id, topics.UpKind.FIRMWARE),
    )
    return Outbound(topics.device_down(device_id, topics.DownKind.ERROR), encode_message(reply))
