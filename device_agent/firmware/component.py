"""The firmware session component: offers in, verified chunks to the inactive slot, reports out.

A :class:`~device_agent.components.SessionComponent`, sans network IO: the
session hands it ``fw_*`` messages and ``now``, and it returns what to
publish. Files (the slots, ``install.cbor``, ``boot.cbor``, ``suit.cbor``,
``offer.cbor``) are written through :class:`~device_agent.firmware.slots.Installer`
and :mod:`device_agent.firmware.records`; a ranged HTTP download goes through
an injected :class:`~device_agent.firmware.http.RangeFetcher`.

The flow (``docs/firmware-agent.md``):

* on every connect: :class:`FirmwareQuery` (installed sequence, current job),
  every unacknowledged step report again, and the chunk requests that resume
  the download from the last chunk written;
* :class:`FirmwareOffer`: the envelope is verified (signature, vendor, class,
  anti-rollback, installability) before a byte is requested; a refusal is
  reported as ``failed`` with its reason; otherwise the offer is persisted and
  the install state machine starts;
* :class:`FirmwareChunk`: checked on arrival against its signed digest, kept
  in the window until it extends the verified prefix, then written to the
  inactive slot; a refused chunk is logged with its typed error and asked for
  again; the last one leads straight on to verify, switch, simulated reboot,
  health check, confirm or revert;
* :class:`FirmwareReportAck`: the acknowledged reports leave the persisted
  outbox; the others are resent every ``report_retry_seconds``;
* :class:`FirmwareCancel`: a job not yet past ``verified`` is abandoned.
"""

from __future__ import annotations

import contextlib
import logging
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from device_agent.errors import AgentError, StateError
from device_agent.firmware.download import ChunkWindow
from device_agent.firmware.errors import (
    ChunkOutOfRange,
    ChunkRefused,
    DownloadFailed,
    FirmwareError,
    ForeignJob,
    OfferRefused,
)
from device_agent.firmware.http import RangeFetcher
from device_agent.firmware.install import ABANDONABLE, SETTLED, BadTarget, Slot, Step, Target
from device_agent.firmware.processor import (
    DeviceClass,
    VerifiedOffer,
    check_chunk,
    range_bounds,
    split_range,
    verify_offer,
)
from device_agent.firmware.records import OfferFile, RollbackStore
from device_agent.firmware.report import StepReport
from device_agent.firmware.settings import FirmwareSettings, HealthVerdict
from device_agent.firmware.slots import BOOT_FILE, CrashHook, FirmwareDir, Hooks, Installer
from device_agent.outgoing import Outgoing
from protocols import cose, topics
from protocols.fields import MAX_TEXT
from protocols.firmware_messages import (
    FirmwareCancel,
    FirmwareChunk,
    FirmwareChunkRequest,
    FirmwareOffer,
    FirmwareQuery,
    FirmwareReport,
    FirmwareReportAck,
)
from protocols.messages import ErrorReply, Message, encode_message

log = logging.getLogger(__name__)

#: Ranged HTTP requests one pass (a tick, an offer, a connect) may make.
HTTP_RANGES_PER_PASS = 8
#: Refused chunks tolerated per job, at least; beyond, the job fails.
MIN_BAD_CHUNKS = 16
_REMEMBERED_REFUSALS = 64
#: Minimum seconds between the queries a hub refusal triggers.
REFUSAL_QUERY_SECONDS = 5
#: Refusal codes that mean "the job is not what you think": re-synchronise.
_JOB_REFUSALS = frozenset({"unknown_job", "job_not_active", "not_entitled"})


@dataclass(frozen=True, slots=True)
class HealthProbe:
    """What a health check is told about the image that just booted.

    Attributes:
        slot: The slot the device runs now (the new one).
        job_id: The install job.
        sequence: The image's SUIT sequence number.
        digest: The image's SHA-256 (from the signed manifest).
    """

    slot: Slot
    job_id: str
    sequence: int
    digest: bytes


HealthCheck = Callable[[HealthProbe], bool | None]
"""``True`` passed, ``False`` failed, ``None`` no verdict this boot."""


def fixed_health(verdict: HealthVerdict) -> HealthCheck:
    """A simulated health check that always gives ``verdict``."""
    answer = {"pass": True, "fail": False, "silent": None}[verdict]
    return lambda probe: answer


class _Pending(Exception):
    """The download waits for more chunks; the installer resumes on the next run."""


def _no_crash(point: str) -> None:
    del point


def _unacknowledged(report: StepReport) -> bool:
    """The installer's send hook: reports go out over MQTT and are acknowledged later."""
    del report
    return False


def _wire_text(text: str) -> str:
    cleaned = "".join(" " if unicodedata.category(ch) == "Cc" else ch for ch in text).strip()
    return (cleaned or "unspecified")[:MAX_TEXT]


@dataclass
class _Job:
    offer: VerifiedOffer
    window: ChunkWindow
    started: int
    http: bool


class FirmwareComponent:
    """Firmware updates for one device session (see the module docstring)."""

    def __init__(
        self,
        *,
        device_id: str,
        root: Path,
        settings: FirmwareSettings,
        keys: Callable[[], Sequence[cose.CoseKey]],
        health: HealthCheck | None = None,
        fetcher: RangeFetcher | None = None,
        crash: CrashHook | None = None,
        now: int = 0,
    ) -> None:
        """Power on: run the bootloader, load the persisted install, carry it on.

        Args:
            device_id: This device.
            root: The firmware directory (provisioned: see :func:`provision`).
            settings: The ``[firmware]`` settings.
            keys: The current ``firmware`` trust anchors as COSE keys.
            health: The health check of a new image (default: the settings' verdict).
            fetcher: Ranged HTTP downloads (needed for ``transport = "http"``).
            crash: Called at every persistence point (crash tests).
            now: The time of the power-on.

        Raises:
            StateError: the firmware directory is unprovisioned, corrupt or inconsistent.
        """
        self.device_id = device_id
        self.settings = settings
        self._device = DeviceClass(settings.vendor_id, settings.class_id)
        self._keys = keys
        self._health = health or fixed_health(settings.health_check)
        self._fetcher = fetcher
        self._now = now
        self._up = topics.device_up(device_id, topics.UpKind.FIRMWARE)
        hook = crash or _no_crash
        self._rollback = RollbackStore(root, hook)
        self._offers = OfferFile(root, hook)
        self._sent: dict[str, int] = {}
        self._refused: list[str] = []
        self._last_refusal_query = -REFUSAL_QUERY_SECONDS
        self._job: _Job | None = None
        self.refused_chunks: Counter[str] = Counter()
        hooks = Hooks(
            fetch=self._fetch,
            health=self._check_health,
            send=_unacknowledged,
            clock=lambda: self._now,
            crash=hook,
        )
        self.installer = Installer(
            root,
            device_id,
            hooks,
            max_boot_attempts=settings.max_boot_attempts,
            initial_sequence=self._rollback.installed,
        )
        self._restore(now)

    # ------------------------------------------------------------ views

    @property
    def installed_seq(self) -> int:
        """Sequence number of the confirmed image in the active slot (0: unknown)."""
        return max(self._rollback.installed, self.installer.state.confirmed_sequence)

    @property
    def step(self) -> Step:
        """The install state machine's step."""
        return self.installer.state.step

    @property
    def job_id(self) -> str | None:
        """The job of the current or last install."""
        target = self.installer.state.target
        return None if target is None else target.job_id

    @property
    def active_slot(self) -> Slot:
        """The slot the bootloader treats as confirmed."""
        return self.installer.fw.read_boot().active

    @property
    def running_slot(self) -> Slot:
        """The slot the (simulated) device booted."""
        return self.installer.running

    def running_image(self) -> bytes:
        """The bytes of the image the device runs."""
        return self.installer.fw.slot_path(self.running_slot).read_bytes()

    # ------------------------------------------------------ SessionComponent

    def on_connected(self, *, now: int) -> list[Outgoing]:
        """Ask the hub for the current job, resend reports, resume the download."""
        self._now = now
        if self._job is not None:
            self._job.window.restart()
        out = [self._query()]
        try:
            out.extend(self._progress(now, force_reports=True))
        except AgentError as exc:
            log.error("firmware: cannot resume after connecting: %s", exc)
        return out

    def on_message(self, message: Message, *, now: int) -> list[Outgoing] | None:
        """Handle the ``fw_*`` messages coming down; ``None`` for anything else."""
        handlers: dict[type[Message], Callable[[Message, int], list[Outgoing]]] = {
            FirmwareOffer: self._on_offer,  # type: ignore[dict-item]
            FirmwareChunk: self._on_chunk,  # type: ignore[dict-item]
            FirmwareCancel: self._on_cancel,  # type: ignore[dict-item]
            FirmwareReportAck: self._on_ack,  # type: ignore[dict-item]
        }
        if isinstance(message, ErrorReply):
            return self._on_refusal(message, now)
        handler = handlers.get(type(message))
        if handler is None:
            return None
        self._now = now
        try:
            return handler(message, now)
        except AgentError as exc:
            log.error("firmware: %s not processed: %s", message.TYPE, exc)
            return []

    def tick(self, *, now: int) -> list[Outgoing]:
        """Time out stalled downloads, flush verified chunks, resend reports."""
        self._now = now
        try:
            self._check_deadlines(now)
            return self._progress(now, flush=True)
        except AgentError as exc:
            log.error("firmware: tick failed: %s", exc)
            return []

    # ------------------------------------------------------------ handlers

    def _on_offer(self, offer: FirmwareOffer, now: int) -> list[Outgoing]:
        if not self._make_room_for(offer):
            return []
        if offer.job_id in self._refused:
            log.info("firmware offer %s was refused already", offer.job_id)
            return []
        try:
            verified = verify_offer(
                offer, self._keys(), device=self._device, state=self._rollback.state
            )
        except OfferRefused as exc:
            log.warning("firmware offer %s refused: %s", offer.job_id, exc.reason)
            self._refuse(offer.job_id, exc.reason)
            return self._reports(now)
        self._offers.save(offer)  # before the start: a restart re-verifies it
        try:
            self.installer.start(verified.target)
        except BadTarget as exc:
            self._refuse(offer.job_id, f"bad_target: {exc}")
            return self._reports(now)
        self._job = self._new_job(verified, now)
        log.info(
            "firmware job %s: sequence %d, %d bytes in %d chunks over %s",
            offer.job_id,
            verified.manifest.sequence,
            verified.target.size,
            verified.chunk_count,
            "http" if self._job.http else "mqtt",
        )
        self._run()  # cuts the inactive slot back to 0
        return self._progress(now)

    def _make_room_for(self, offer: FirmwareOffer) -> bool:
        """Decide what an offer means for the install in flight; ``False``: ignore it."""
        state = self.installer.state
        current = state.target.job_id if state.target is not None else None
        if state.step in SETTLED:
            if current == offer.job_id:
                log.info("firmware job %s is %s already", offer.job_id, state.step.value)
                return False
            return True
        if current == offer.job_id:
            return False  # the hub's answer to our query: the download goes on
        if state.step in ABANDONABLE:
            log.warning("firmware job %s superseded by %s", current, offer.job_id)
            self._abandon(f"superseded by {offer.job_id}")
            return True
        log.warning("firmware offer %s ignored: job %s is %s", offer.job_id, current, state.step)
        return False

    def _on_chunk(self, chunk: FirmwareChunk, now: int) -> list[Outgoing]:
        job = self._job
        try:
            if job is None or self.installer.state.step is not Step.DOWNLOADING:
                raise ForeignJob(f"chunk {chunk.index} of {chunk.job_id}: no download under way")
            check_chunk(job.offer, chunk)
        except ChunkRefused as exc:
            self.refused_chunks[exc.code] += 1
            log.warning(
                "firmware chunk %d of %s refused: %s", chunk.index, chunk.job_id, exc.reason
            )
            if job is None or isinstance(exc, ForeignJob | ChunkOutOfRange):
                return []
            job.window.refused(chunk.index)
            if job.window.bad_chunks > max(MIN_BAD_CHUNKS, job.offer.chunk_count):
                self._abandon(f"download failed: {job.window.bad_chunks} chunks refused")
            return self._progress(now)
        if not job.window.accept(chunk.index, chunk.data, now):
            return []  # a duplicate, or not asked for: nothing kept
        return self._progress(now)

    def _on_cancel(self, cancel: FirmwareCancel, now: int) -> list[Outgoing]:
        state = self.installer.state
        current = state.target.job_id if state.target is not None else None
        if current != cancel.job_id or state.step in SETTLED:
            log.info("firmware cancel of %s: nothing to do (%s)", cancel.job_id, state.step.value)
            return []
        if state.step not in ABANDONABLE:
            log.info("firmware cancel of %s: past %s, finishing", cancel.job_id, state.step.value)
            return []
        log.warning("firmware job %s cancelled by the hub: %s", cancel.job_id, cancel.reason)
        self._abandon(f"cancelled: {cancel.reason}")
        return self._reports(now)

    def _on_refusal(self, refusal: ErrorReply, now: int) -> list[Outgoing] | None:
        """The hub refused a chunk request: ask it what the job is now.

        The refusal names only the topic, not the job, so an error about an
        earlier job must not abandon the current one: the query makes the hub
        (the source of truth) answer with the current offer or a cancel.
        Queries after refusals are spaced at least :data:`REFUSAL_QUERY_SECONDS`.
        """
        if refusal.ref != self._up:
            return None
        too_soon = now - self._last_refusal_query < REFUSAL_QUERY_SECONDS
        if refusal.code not in _JOB_REFUSALS or too_soon:
            return []
        self._last_refusal_query = now
        log.warning("firmware: hub refused a chunk request (%s); asking for the job", refusal.code)
        return [self._query()]

    def _query(self) -> Outgoing:
        state = self.installer.state
        in_flight = state.target is not None and state.step not in SETTLED
        query = FirmwareQuery(
            installed_seq=self.installed_seq,
            job_id=state.target.job_id if in_flight and state.target else None,
        )
        return self._out(query)

    def _on_ack(self, ack: FirmwareReportAck, now: int) -> list[Outgoing]:
        del now
        dropped = self.installer.acknowledge(ack.keys)
        for key in ack.keys:
            self._sent.pop(key, None)
        log.debug("firmware: %d of %d acknowledged reports dropped", dropped, len(ack.keys))
        return []

    # ------------------------------------------------------------ internals

    def _restore(self, now: int) -> None:
        state = self.installer.state
        if state.step is Step.DOWNLOADING:
            try:
                self._job = self._resume_job(state.target, state.written, now)
            except (FirmwareError, StateError) as exc:
                log.error("firmware: cannot resume the download: %s", exc)
                self.installer.abort(f"cannot resume the download: {exc}")
        self._run()

    def _resume_job(self, target: Target | None, written: int, now: int) -> _Job:
        offer = self._offers.load()
        if target is None or offer is None or offer.job_id != target.job_id:
            raise FirmwareError("the offer of the job in flight is not stored")
        verified = verify_offer(
            offer, self._keys(), device=self._device, state=self._rollback.state
        )
        if verified.target != target:
            raise FirmwareError("the stored offer names another image than the install")
        job = self._new_job(verified, now)
        if written >= target.size:
            job.window.resync(verified.chunk_count)
        elif written % verified.chunk_size == 0:
            job.window.resync(written // verified.chunk_size)
        else:
            raise FirmwareError(f"{written} bytes written is not a whole number of chunks")
        log.info("firmware job %s resumes at chunk %d", target.job_id, job.window.base)
        return job

    def _new_job(self, verified: VerifiedOffer, now: int) -> _Job:
        http = self.settings.transport == "http"
        if http and (verified.http_path is None or self._fetcher is None):
            log.warning("firmware job %s: no HTTP download offered, using MQTT", verified.job_id)
            http = False
        window = ChunkWindow(
            chunk_count=verified.chunk_count,
            in_flight=self.settings.in_flight,
            request_size=self.settings.request_size,
            timeout=self.settings.chunk_timeout_seconds,
            max_stalls=self.settings.max_stalls,
        )
        return _Job(offer=verified, window=window, started=now, http=http)

    def _run(self) -> None:
        """Carry the install on as far as it goes; then settle the bookkeeping."""
        with contextlib.suppress(_Pending):
            self.installer.run()
        state = self.installer.state
        if state.confirmed_sequence > self._rollback.installed:
            self._rollback.advance(state.confirmed_sequence)
        if state.step is not Step.DOWNLOADING and self._job is not None:
            log.info("firmware job %s: %s", self._job.offer.job_id, state.step.value)
            self._job = None

    def _fetch(self, target: Target, offset: int) -> Iterator[bytes]:
        """The installer's source: verified chunks contiguous from ``offset``."""
        job = self._job
        if job is None or job.offer.job_id != target.job_id:
            raise _Pending
        size = job.offer.chunk_size
        job.window.resync(job.offer.chunk_count if offset >= target.size else offset // size)
        chunks = job.window.take()
        if chunks:
            yield b"".join(chunks)
        if not job.window.complete:
            raise _Pending

    def _check_health(self, slot: Slot) -> bool | None:
        target = self.installer.state.target
        if target is None:
            return False
        probe = HealthProbe(
            slot=slot, job_id=target.job_id, sequence=target.sequence, digest=target.digest
        )
        verdict = self._health(probe)
        log.info("firmware job %s: health check of slot %s: %s", target.job_id, slot, verdict)
        return verdict

    def _progress(
        self, now: int, *, flush: bool = False, force_reports: bool = False
    ) -> list[Outgoing]:
        job = self._job
        if job is not None and job.http:
            for _ in range(HTTP_RANGES_PER_PASS):
                self._pump_http(job, now)
                if job is not self._job or not job.window.ready():
                    break
                self._run()
        elif job is not None:
            ready = job.window.ready()
            whole = job.window.base + ready >= job.window.chunk_count
            if ready and (flush or whole or ready >= self.settings.request_size):
                self._run()
        return [*self._reports(now, force=force_reports), *self._requests(now)]

    def _pump_http(self, job: _Job, now: int) -> None:
        assert self._fetcher is not None and job.offer.http_path is not None
        manifest = job.offer.manifest
        for index, count in job.window.plan(now):
            first, last = range_bounds(manifest, index, count)
            try:
                body = self._fetcher.fetch(job.offer.http_path, first, last)
                chunks = split_range(manifest, index, count, body)
            except DownloadFailed as exc:
                log.warning(
                    "firmware job %s: GET %d-%d: %s", job.offer.job_id, first, last, exc.reason
                )
                if exc.permanent:
                    self._abandon(f"download failed: {exc.reason}")
                return  # transient: asked again once the window times out
            except ChunkRefused as exc:
                self.refused_chunks[exc.code] += 1
                log.warning(
                    "firmware job %s: range %d-%d refused: %s",
                    job.offer.job_id,
                    first,
                    last,
                    exc.reason,
                )
                for number in range(index, index + count):
                    job.window.refused(number)
                return
            for number, data in chunks:
                job.window.accept(number, data, now)

    def _requests(self, now: int) -> list[Outgoing]:
        job = self._job
        if job is None or job.http or self.installer.state.step is not Step.DOWNLOADING:
            return []
        return [
            self._out(FirmwareChunkRequest(job_id=job.offer.job_id, index=index, count=count))
            for index, count in job.window.plan(now)
        ]

    def _reports(self, now: int, *, force: bool = False) -> list[Outgoing]:
        outbox = self.installer.state.outbox
        live = {report.key for report in outbox}
        self._sent = {key: at for key, at in self._sent.items() if key in live}
        out = []
        for report in outbox:
            last = self._sent.get(report.key)
            if force or last is None or now - last >= self.settings.report_retry_seconds:
                out.append(self._out(self._report_message(report)))
                self._sent[report.key] = now
        return out

    @staticmethod
    def _report_message(report: StepReport) -> FirmwareReport:
        return FirmwareReport(
            job_id=report.job_id,
            step=report.step.value,
            key=report.key,
            at=max(0, report.at),
            reason=None if report.reason is None else _wire_text(report.reason),
            installed_seq=report.installed_seq,
        )

    def _check_deadlines(self, now: int) -> None:
        state, job = self.installer.state, self._job
        if state.step is Step.DOWNLOADING and job is None:
            self._abandon("no verified offer to resume the download with")
            return
        if job is None:
            return
        if now - job.started >= self.settings.download_timeout_seconds:
            self._abandon(f"download timed out after {self.settings.download_timeout_seconds} s")
            return
        stalls = job.window.stalls
        if job.window.expire(now):
            self._abandon(f"download stalled: {job.window.stalls} requests in a row unanswered")
        elif job.window.stalls > stalls:
            log.info(
                "firmware job %s: no chunk in time, asking again from chunk %d (stall %d)",
                job.offer.job_id,
                job.window.base,
                job.window.stalls,
            )

    def _abandon(self, reason: str) -> None:
        if self.installer.state.step in ABANDONABLE:
            self.installer.abort(reason)
        self._job = None
        self._run()

    def _refuse(self, job_id: str, reason: str) -> None:
        self.installer.refuse(job_id, reason)
        self._refused = [*self._refused, job_id][-_REMEMBERED_REFUSALS:]

    def _out(self, message: Message) -> Outgoing:
        return Outgoing(self._up, encode_message(message))


def provision(root: Path, image: bytes, *, sequence: int = 0) -> None:
    """Factory-install ``image`` (SUIT sequence ``sequence``) into slot ``a`` of ``root``.

    Does nothing when ``root`` is provisioned already.

    Raises:
        StateError: the directory cannot be written.
    """
    fw = FirmwareDir(root)
    if (root / BOOT_FILE).exists():
        return
    if sequence:
        RollbackStore(root).advance(sequence)
    fw.provision(image, "a")


__all__ = ["FirmwareComponent", "HealthCheck", "HealthProbe", "fixed_health", "provision"]
