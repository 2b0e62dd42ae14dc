"""MQTT delivery: the batch handler for ``d/{id}/up/firmware``.

One call handles every firmware message of an MQTT batch, inside the batch's
transaction (replies are published after its commit):

- ``fw_query``: record the installed sequence; cancel a named job that is no
  longer active; resend the offer of the device's active job, or offer its
  pending job now if the rollout would (:func:`hub.rollouts.engine.offers_for_device`).
- ``fw_chunk_req``: refuse (``ErrorReply`` on ``d/{id}/down/error``) an unknown
  job or another device's (``unknown_job``), a job not in progress
  (``job_not_active``), a device failing the entitlement gate *now*
  (``not_entitled``; a pass is remembered per (device, job) for ``gate_ttl``,
  one second by default: :class:`hub.firmware.gate.PassCache`), an index past
  the last chunk (``chunk_out_of_range``);
  otherwise answer ``fw_chunk`` messages (pre-encoded per package, see
  :class:`hub.firmware.wire.ChunkTails`). ``count`` is capped by the chunk count.
  One call answers at most ``batch_bytes`` of chunk data; what is over that
  budget is *held over*: the rest of the request and every later request of
  the batch wait in the handler's backlog, which the next call serves first.
  A request is held only once its job, owner, job state and index were
  checked (an invalid one is refused at once); when served it is checked
  again (claimed sender, job, gate, index) in that call's transaction. Each
  device has its own queue and the queues are served round-robin, one request
  per device in turn, so one device's flood cannot delay the others. Chunks
  already held for a (device, job) are not held twice (a request overlapping
  them is trimmed), and at most ``max_held_per_job`` chunks are held per
  (device, job): that device's own excess is dropped with a log line (it asks
  again). Past ``max_backlog`` held requests in all, new ones are dropped the
  same way; below those bounds nothing held is dropped, and a call that fails
  (database outage, handler defect) puts what it took back at the front. The
  adapter makes the next call as soon as it has published this one's replies
  (:attr:`FirmwareHandler.backlog`), and the router serves the backlog after
  every batch of other messages too, so the publish window paces the
  transfer. No per-device download state is kept beyond that queue.
- ``fw_report``: store each (device, key) once, move the job forward
  (:func:`hub.rollouts.policy.next_job_state`), and acknowledge the keys in one
  ``fw_report_ack`` per device after the commit; a replayed key is acknowledged
  again without being re-applied.

Every item is validated before its first write, so a refused item writes
nothing and the rest of the batch goes on.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter, OrderedDict, defaultdict, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from hub.firmware.blobs import BlobStore
from hub.firmware.errors import BlobError
from hub.firmware.gate import Gate, PassCache, entitled_devices
from hub.firmware.installed import INT64_MAX, note_confirmed, note_reported
from hub.firmware.models import DeviceFirmware, FirmwarePackage
from hub.firmware.wire import ChunkTails, chunk_prefix, chunk_tails
from hub.mqtt.outbound import Outbound
from hub.registry.models import Device
from hub.rollouts import engine, jobs
from hub.rollouts.models import FirmwareJob, FirmwareReport, Rollout
from hub.rollouts.policy import ACTIVE_STATES, next_job_state
from protocols import topics
from protocols.firmware_messages import (
    MAX_ACK_KEYS,
    MAX_CHUNK_WINDOW,
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
"""Most payload bytes one call answers with (bounds memory and the publish window)."""
GATE_TTL = timedelta(seconds=1)
"""How long a device's gate pass for a job is trusted by the chunk path."""
MAX_BACKLOG = 50_000
"""Most chunk requests held over for later calls (beyond: dropped, the device asks again)."""
MAX_HELD_PER_JOB = 2 * 1024
"""Most chunks held per (device, job): twice the largest agent window (``in_flight`` ≤ 1024)."""
MAX_RESTORES = 3
"""Failed calls in a row after which the backlog they took is dropped, not put back."""
IN_CHUNK = 900
MAX_ERRORS_PER_DEVICE = 8
"""Error replies (and log lines) one device gets per handler call; more refusals are counted."""
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
    queriers: list[str] = field(default_factory=list)
    current: dict[str, list[FirmwareJob]] = field(default_factory=dict)
    # Rows loaded up front for the queries: held here so the session's (weak)
    # identity map keeps them and the per-device lookups find them without SQL.
    held_rows: list[object] = field(default_factory=list)
    served: int = 0
    held: list[tuple[str, FirmwareChunkRequest]] = field(default_factory=list)
    out: list[Outbound] = field(default_factory=list)
    acks: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    entitled: dict[str, set[str]] = field(default_factory=dict)
    gated: dict[str, set[str]] = field(default_factory=dict)  # package -> devices evaluated
    refused: Counter[str] = field(default_factory=Counter)  # refusals per device


_Held = tuple[str, FirmwareChunkRequest]
"""A held-over request and its sender."""


class FirmwareHandler:
    """The :class:`hub.plugins.BatchHandler` of the ``firmware`` topic kind."""

    kind = topics.UpKind.FIRMWARE.value

    def __init__(
        self,
        *,
        store: BlobStore,
        batch_bytes: int = BATCH_BYTES,
        tails: ChunkTails | None = None,
        max_backlog: int = MAX_BACKLOG,
        max_held_per_job: int = MAX_HELD_PER_JOB,
        gate_ttl: timedelta = GATE_TTL,
        gate_cache_entries: int = 100_000,
    ) -> None:
        self._store = store
        self._batch_bytes = batch_bytes
        self._packages: dict[str, FirmwarePackage] = {}
        self._tails = tails if tails is not None else ChunkTails()
        self._max_backlog = max_backlog
        self._max_held_per_job = max_held_per_job
        self._passes = PassCache(gate_ttl, gate_cache_entries)
        # device -> its held requests, oldest first; devices in the order they are served.
        self._queues: OrderedDict[str, deque[FirmwareChunkRequest]] = OrderedDict()
        # (device, job) -> the chunk indices held for it: overlap detection and the cap.
        self._held_chunks: dict[tuple[str, str], set[int]] = {}
        self._held_requests = 0
        self._failures = 0  # calls in a row that failed after taking the backlog
        self._backlog_lock = threading.Lock()  # two dispatchers may share one router

    @property
    def backlog(self) -> int:
        """Chunk requests held over for the next call (the adapter calls again at once)."""
        return self._held_requests

    def handle(
        self, session: Session, items: Sequence[tuple[str, Message]], now: datetime
    ) -> list[Outbound]:
        """Serve held-over chunk requests, then the batch's messages in arrival order.

        Returns the replies, to publish after the commit.
        """
        taken = self._take_backlog()
        try:
            batch = self._handle(session, [*self._claimed_held(session, taken), *items], now)
        except BaseException:
            self._restore(taken)
            raise
        self._failures = 0
        self._hold(batch.held)
        return batch.out

    def _handle(
        self, session: Session, items: Sequence[tuple[str, Message]], now: datetime
    ) -> _Batch:
        batch = self._load(session, items, now)
        for device_id, message in items:
            try:
                self._one(session, batch, device_id, message)
            except Refused as exc:
                self._refuse(batch, device_id, exc)
        for device_id, count in batch.refused.items():
            if count > MAX_ERRORS_PER_DEVICE:
                log.warning(
                    "%d more firmware messages from %s refused in one batch (no reply, no log)",
                    count - MAX_ERRORS_PER_DEVICE,
                    device_id,
                )
        for device_id, keys in batch.acks.items():
            topic = topics.device_down(device_id, topics.DownKind.FIRMWARE)
            for start in range(0, len(keys), MAX_ACK_KEYS):
                ack = FirmwareReportAck(keys=tuple(keys[start : start + MAX_ACK_KEYS]))
                batch.out.append(Outbound(topic, encode_message(ack)))
        return batch

    @staticmethod
    def _refuse(batch: _Batch, device_id: str, exc: Refused) -> None:
        """Answer a refusal, up to :data:`MAX_ERRORS_PER_DEVICE` per device per batch.

        A device flooding bogus requests (random job ids) gets that many error
        replies and log lines per batch, not one each: its flood cannot turn into
        an equal flood of hub publishes and log lines.
        """
        batch.refused[device_id] += 1
        if batch.refused[device_id] > MAX_ERRORS_PER_DEVICE:
            return
        log.info("firmware message from %s refused: %s: %s", device_id, exc.code, exc)
        batch.out.append(_error(device_id, exc.code, str(exc)))

    # --- the backlog ------------------------------------------------------------------------

    def _take_backlog(self) -> list[_Held]:
        """Empty the backlog: its requests round-robin, one per device in turn."""
        with self._backlog_lock:
            queues = list(self._queues.items())
            self._queues = OrderedDict()
            self._held_chunks = {}
            self._held_requests = 0
        taken: list[_Held] = []
        while queues:
            for device_id, queue in queues:
                taken.append((device_id, queue.popleft()))
            queues = [(device_id, queue) for device_id, queue in queues if queue]
        return taken

    @staticmethod
    def _claimed_held(session: Session, taken: list[_Held]) -> list[tuple[str, Message]]:
        """The taken requests whose senders are still claimed (the others are dropped)."""
        if not taken:
            return []
        claimed = _claimed(session, sorted({device_id for device_id, _ in taken}))
        return [(device_id, request) for device_id, request in taken if device_id in claimed]

    def _restore(self, taken: list[_Held]) -> None:
        """Put what a failed call took back in front of what was held since."""
        self._failures += 1
        if self._failures > MAX_RESTORES:
            # A call that fails every time must not spin on the same requests:
            # they are dropped, and the devices ask again after their timeout.
            log.error("firmware backlog dropped after %d failed calls", self._failures - 1)
            self._failures = 0
            return
        self._hold(taken, front=True)

    def _hold(self, requests: Iterable[_Held], *, front: bool = False) -> None:
        """Queue ``requests`` (in order) for the next call, within the bounds.

        With ``front`` they go before everything already held (a restore).
        """
        with self._backlog_lock:
            later: list[_Held] = []
            if front:
                later = [(d, r) for d, queue in self._queues.items() for r in queue]
                self._queues, self._held_chunks, self._held_requests = OrderedDict(), {}, 0
            for device_id, request in [*requests, *later]:
                self._hold_one(device_id, request)

    def _hold_one(self, device_id: str, request: FirmwareChunkRequest) -> None:
        """Queue the chunks of ``request`` not already held for its (device, job)."""
        held = self._held_chunks.setdefault((device_id, request.job_id), set())
        wanted = [i for i in range(request.index, request.index + request.count) if i not in held]
        room = self._max_held_per_job - len(held)
        if len(wanted) > room:
            log.warning(
                "firmware: %s holds %d chunks of job %s; %d more dropped (it asks again)",
                device_id, len(held), request.job_id, len(wanted) - room,
            )  # fmt: skip
            wanted = wanted[: max(room, 0)]
        for index, count in _runs(wanted):
            if self._held_requests >= self._max_backlog:
                log.warning("firmware chunk backlog full; request of %s dropped", device_id)
                return
            self._queues.setdefault(device_id, deque()).append(
                FirmwareChunkRequest(request.job_id, index, count)
            )
            held.update(range(index, index + count))
            self._held_requests += 1

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
        queriers = sorted({d for d, m in items if isinstance(m, FirmwareQuery)})
        reported = {m.job_id for _, m in items if isinstance(m, ReportMessage)}
        requested = {m.job_id for _, m in items if isinstance(m, FirmwareChunkRequest)}
        keys = sorted({m.key for _, m in items if isinstance(m, ReportMessage)})
        jobs = _jobs(session, sorted(requested - reported), lock=False)
        jobs.update(_jobs(session, sorted(reported), lock=True))
        batch = _Batch(
            now=now,
            devices=_claimed(session, writers),
            jobs=jobs,
            seen_keys=_seen(session, writers, keys),
            budget=self._batch_bytes,
            queriers=queriers,
        )
        if queriers:
            batch.current = engine.current_jobs(session, queriers)
            batch.held_rows = _query_rows(session, queriers, batch.current)
        return batch

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
        if package.id not in batch.entitled or device_id not in batch.gated[package.id]:
            # One evaluation per package and call: every device of the batch that
            # may need it (its requests' jobs, its queries' offers), at "now".
            wanted = [
                j.device_id
                for j in batch.jobs.values()
                if j.package_id == package.id
                and not self._passes.passed(j.device_id, j.job_id, batch.now)
            ]
            wanted.extend(batch.queriers)
            if package.id in batch.entitled:
                # Not foreseen: its gate pass was still cached when the memo was
                # made, and has gone since (expired or evicted). Evaluated alone.
                wanted = [device_id]
            batch.gated.setdefault(package.id, set()).update(wanted)
            passed = entitled_devices(session, wanted, gate, batch.now)
            batch.entitled.setdefault(package.id, set()).update(passed)
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
        # Job, owner, state and index are checked before a request is held, so
        # only valid requests wait; the gate is checked when it is served.
        job = self._active_job(batch, device_id, request.job_id)
        package = self._package(session, job.package_id)
        holding = bool(batch.held)  # the budget is spent: later requests wait their turn
        if not holding and not self._passes.passed(device_id, job.job_id, batch.now):
            if not self._entitled(session, batch, package, device_id):
                raise Refused("not_entitled", f"this device is not entitled to job {job.job_id}")
            self._passes.note(device_id, job.job_id, batch.now)
        if request.index >= package.chunk_count:
            raise Refused(
                "chunk_out_of_range",
                f"chunk {request.index} of job {job.job_id}: the payload has"
                f" {package.chunk_count} chunks (0..{package.chunk_count - 1})",
            )
        count = min(request.count, package.chunk_count - request.index)
        if holding:
            batch.held.append((device_id, FirmwareChunkRequest(job.job_id, request.index, count)))
            return
        # At least one chunk per call, so a budget below one chunk still progresses.
        affordable = max(batch.budget // package.chunk_size, 0 if batch.served else 1)
        served = min(count, affordable)
        if served < count:
            rest = FirmwareChunkRequest(job.job_id, request.index + served, count - served)
            batch.held.append((device_id, rest))
        if served > 0:
            self._send_chunks(batch, job, package, request.index, served)

    def _send_chunks(
        self, batch: _Batch, job: FirmwareJob, package: FirmwarePackage, index: int, count: int
    ) -> None:
        try:
            tails = self._chunk_tails(package, index, count)
        except BlobError:
            log.exception("firmware payload of package %s unreadable", package.id)
            return  # the device re-requests; nothing to tell it that would help
        batch.budget -= count * package.chunk_size
        batch.served += count
        topic = topics.device_down(job.device_id, topics.DownKind.FIRMWARE)
        prefix = chunk_prefix(job.job_id)
        batch.out.extend(Outbound(topic, prefix + tail) for tail in tails)

    def _chunk_tails(self, package: FirmwarePackage, index: int, count: int) -> list[bytes]:
        """The encoded tails of chunks ``index .. index+count-1``: cached, or read now."""

        def load() -> bytes:
            return self._store.read_range(package.blob_key, 0, package.size)

        cached = self._tails.get(package.id, package.size, package.chunk_size, load)
        if cached is not None:
            return cached[index : index + count]
        start = index * package.chunk_size
        end = min(package.size, (index + count) * package.chunk_size)
        data = self._store.read_range(package.blob_key, start, end)
        return chunk_tails(index, data, package.chunk_size)

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
        offers = engine.offers_for_device(
            session,
            device_id,
            batch.now,
            entitled=lambda package: self._entitled(session, batch, package, device_id),
            current=batch.current.get(device_id, []),
        )
        batch.out.extend(offers)

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


def _runs(indices: list[int]) -> list[tuple[int, int]]:
    """Ascending ``indices`` as (start, count) runs of consecutive chunks, each ≤ 16 long."""
    runs: list[tuple[int, int]] = []
    for index in indices:
        if runs and runs[-1][0] + runs[-1][1] == index and runs[-1][1] < MAX_CHUNK_WINDOW:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((index, 1))
    return runs


def _claimed(session: Session, device_ids: list[str]) -> dict[str, Device]:
    found: dict[str, Device] = {}
    for start in range(0, len(device_ids), IN_CHUNK):
        chunk = device_ids[start : start + IN_CHUNK]
        rows = session.scalars(
            select(Device).where(Device.id.in_(chunk), Device.status == "claimed")
        )
        found.update((device.id, device) for device in rows)
    return found


def _query_rows(
    session: Session, device_ids: list[str], current: dict[str, list[FirmwareJob]]
) -> list[object]:
    """What answering these devices' queries reads per device: firmware rows, packages."""
    rows: list[object] = []
    package_ids = sorted({job.package_id for found in current.values() for job in found})
    for start in range(0, len(device_ids), IN_CHUNK):
        chunk = device_ids[start : start + IN_CHUNK]
        rows.extend(
            session.scalars(select(DeviceFirmware).where(DeviceFirmware.device_id.in_(chunk)))
        )
    for start in range(0, len(package_ids), IN_CHUNK):
        chunk = package_ids[start : start + IN_CHUNK]
        rows.extend(session.scalars(select(FirmwarePackage).where(FirmwarePackage.id.in_(chunk))))
    return rows


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
