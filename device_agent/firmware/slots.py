"""File-backed A/B slots, the persisted install state, and the IO orchestrator.

Files stand in for flash, all in one firmware directory::

    slot_a.bin, slot_b.bin   the two image slots
    boot.cbor                the boot record: {"active", "pending", "attempts", "confirmed"}
    install.cbor             the install state machine's state (incl. the report outbox)

:class:`Installer` drives the pure core (:mod:`device_agent.firmware.install`)
like python-tuf's ``Updater`` drives its trusted metadata set: every event
goes through :func:`~device_agent.firmware.install.step`, the new state is
written to ``install.cbor`` atomically **before** any of its effects run or
any of its reports is sent (write-ahead), and every (re)start runs
:func:`~device_agent.firmware.install.redo` of the persisted state, whose
effects are idempotent. A crash anywhere therefore resumes or reverts.

The image is written **in place** into the inactive slot, not through a temp
file and a rename: a flash slot is a fixed partition that cannot be renamed,
a resumable download needs the verified prefix to survive a crash, and the
slot is harmless while it is inactive. Each chunk is fsynced before the
progress counter that covers it is persisted, a resumed download first cuts
the slot back to that counter (dropping any torn tail), and the boot record
names the slot only after its SHA-256 and size matched the target, checked
once more right before the switch. ``boot.cbor`` and ``install.cbor`` use
:func:`device_agent.storage.atomic_write`; a file that does not decode or
contradicts the other is refused with :class:`~device_agent.errors.StateError`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import os
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from device_agent.errors import StateError
from device_agent.firmware import install
from device_agent.firmware.install import (
    SLOTS,
    SWITCHED,
    BootAttemptWithoutConfirmation,
    Booted,
    CheckHealth,
    ChunkWritten,
    Confirm,
    Download,
    DownloadComplete,
    Effect,
    Event,
    ImageVerified,
    InstallError,
    InstallState,
    InvalidEvent,
    Reboot,
    ReportSent,
    Revert,
    Slot,
    SlotSwitched,
    Start,
    Step,
    SwitchBoot,
    Target,
    VerifySlot,
)
from device_agent.firmware.report import StepReport
from device_agent.storage import atomic_write, read_optional
from protocols import cbor
from protocols.errors import ProtocolError

BOOT_FILE = "boot.cbor"
INSTALL_FILE = "install.cbor"
SLOT_FILES: dict[Slot, str] = {"a": "slot_a.bin", "b": "slot_b.bin"}
FORMAT_VERSION = 1
_MAX_STATE_SIZE = 1024 * 1024
_HASH_BLOCK = 64 * 1024

CrashHook = Callable[[str], None]


def _no_crash(point: str) -> None:
    del point


@dataclass(frozen=True)
class BootRecord:
    """What the (simulated) bootloader reads at power-on.

    Attributes:
        active: The confirmed slot.
        pending: The trial slot to boot instead, until confirmed or given up.
        attempts: Boots of ``pending`` so far.
        confirmed: ``True`` when no trial is under way (``pending`` is ``None``).
    """

    active: Slot
    pending: Slot | None = None
    attempts: int = 0
    confirmed: bool = True


def power_on(record: BootRecord, max_attempts: int) -> tuple[BootRecord, Slot]:
    """The bootloader: pick the slot to boot and count trial boots.

    A trial slot is booted at most ``max_attempts`` times; after that the
    bootloader falls back to the active slot on its own, so a new image that
    never lets the agent run cannot brick the device.

    Returns:
        The updated record (to persist before booting) and the booted slot.
    """
    if record.pending is None:
        return record, record.active
    if record.attempts >= max_attempts:
        return BootRecord(active=record.active), record.active
    return dataclasses.replace(record, attempts=record.attempts + 1), record.pending


class FirmwareDir:
    """The firmware directory: two slot files and two state files."""

    def __init__(self, root: Path, crash: CrashHook = _no_crash) -> None:
        """Use ``root``; ``crash`` is called at every persistence point (tests)."""
        self.root = root
        self._crash = crash

    def slot_path(self, slot: Slot) -> Path:
        """The file standing in for ``slot``."""
        return self.root / SLOT_FILES[slot]

    def provision(self, image: bytes, slot: Slot = "a") -> None:
        """Factory-install ``image`` as the confirmed image in ``slot``.

        Raises:
            StateError: the directory already holds a boot record.
        """
        if (self.root / BOOT_FILE).exists():
            raise StateError(f"{self.root} is already provisioned")
        atomic_write(self.slot_path(slot), image)
        self.write_boot(BootRecord(active=slot))

    def read_boot(self) -> BootRecord:
        """The boot record.

        Raises:
            StateError: missing (not provisioned), corrupt or inconsistent.
        """
        raw = read_optional(self.root / BOOT_FILE)
        if raw is None:
            raise StateError(f"{self.root / BOOT_FILE} is missing; provision the device")
        try:
            return _load_boot(cbor.decode(raw))
        except (ProtocolError, KeyError, TypeError, ValueError) as exc:
            raise StateError(f"refusing {self.root / BOOT_FILE}: {exc}") from exc

    def write_boot(self, record: BootRecord) -> None:
        """Persist the boot record atomically."""
        self._persist(BOOT_FILE, cbor.encode(dataclasses.asdict(record)))

    def load_state(self, device_id: str | None = None) -> InstallState | None:
        """The persisted install state, or ``None`` before the first install.

        Args:
            device_id: When given, a state of another device is refused.

        Raises:
            StateError: the file is corrupt, inconsistent or another device's.
        """
        raw = read_optional(self.root / INSTALL_FILE)
        if raw is None:
            return None
        try:
            state = _load_state(cbor.decode(raw, max_size=_MAX_STATE_SIZE))
            install.validate(state)
        except (ProtocolError, InstallError, StateError, KeyError, TypeError, ValueError) as exc:
            raise StateError(f"refusing {self.root / INSTALL_FILE}: {exc}") from exc
        if device_id is not None and state.device_id != device_id:
            raise StateError(f"refusing {self.root / INSTALL_FILE}: another device's state")
        return state

    def save_state(self, state: InstallState) -> None:
        """Persist the install state atomically."""
        self._persist(INSTALL_FILE, cbor.encode(_dump_state(state)))

    def measure(self, slot: Slot) -> tuple[bytes, int]:
        """SHA-256 and size of the slot's contents (an absent slot is empty)."""
        digest, size = hashlib.sha256(), 0
        try:
            with self.slot_path(slot).open("rb") as handle:
                while block := handle.read(_HASH_BLOCK):
                    digest.update(block)
                    size += len(block)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise StateError(f"cannot read slot {slot}: {exc}") from exc
        return digest.digest(), size

    def truncate(self, slot: Slot, size: int) -> None:
        """Cut the slot to ``size`` bytes (dropping a torn tail), durably."""
        with self._open_slot(slot) as handle:
            handle.truncate(size)
            os.fsync(handle.fileno())

    def write_at(self, slot: Slot, offset: int, data: bytes) -> None:
        """Write ``data`` at ``offset`` in place and fsync before returning.

        The crash hook fires half way through, which leaves a torn write.
        """
        half = len(data) // 2
        with self._open_slot(slot) as handle:
            handle.seek(offset)
            handle.write(data[:half])
            handle.flush()
            self._crash("slot:torn")
            handle.write(data[half:])
            handle.flush()
            os.fsync(handle.fileno())
        self._crash("slot:synced")

    def _open_slot(self, slot: Slot) -> Any:
        path = self.slot_path(slot)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            return os.fdopen(fd, "r+b")
        except OSError as exc:
            raise StateError(f"cannot open slot {slot}: {exc}") from exc

    def _persist(self, name: str, data: bytes) -> None:
        self._crash(f"{name}:before")
        atomic_write(self.root / name, data)
        self._crash(f"{name}:after")


def resume(root: Path) -> tuple[Effect, ...]:
    """The effects a restart must (re)run for the install persisted in ``root``.

    Raises:
        StateError: ``install.cbor`` is corrupt or inconsistent.
    """
    state = FirmwareDir(root).load_state()
    return () if state is None else install.redo(state)


@dataclass(frozen=True)
class Hooks:
    """What the installer needs from the rest of the agent.

    Attributes:
        fetch: Yields the target image's bytes from an offset, in chunks; may
            raise to signal an interrupted download (resume with ``run``).
        health: The health check of the image running in a slot: ``True``
            passed, ``False`` failed, ``None`` no verdict this boot.
        send: Delivers a report; ``True`` once the hub acknowledged it.
        clock: Seconds since the epoch, stamped on reports.
        crash: Called at every persistence point; tests raise from it.
    """

    fetch: Callable[[Target, int], Iterable[bytes]]
    health: Callable[[Slot], bool | None]
    send: Callable[[StepReport], bool]
    clock: Callable[[], int] = lambda: int(time.time())
    crash: CrashHook = _no_crash


class Installer:
    """The IO orchestrator around the pure install core.

    Constructing one is a power-on: the bootloader runs on ``boot.cbor`` and
    the persisted install state is loaded. :meth:`run` then redoes the
    effects of that state and follows the install as far as it can go.
    """

    def __init__(
        self,
        root: Path,
        device_id: str,
        hooks: Hooks,
        *,
        max_boot_attempts: int = install.DEFAULT_MAX_BOOT_ATTEMPTS,
        auto_install: bool = True,
        initial_sequence: int = 0,
    ) -> None:
        """Power on with the firmware directory ``root``.

        ``initial_sequence`` is the sequence number of the factory image, used
        only when no install state has been persisted yet.

        Raises:
            StateError: the directory is not provisioned, or its files are
                corrupt or contradict each other.
        """
        self.fw = FirmwareDir(root, hooks.crash)
        self.hooks = hooks
        self.max_boot_attempts = max_boot_attempts
        self.auto_install = auto_install
        self.state = self.fw.load_state(device_id) or InstallState(
            device_id=device_id, confirmed_sequence=initial_sequence
        )
        self.running: Slot = self._power_on()
        self._queue: deque[Effect] = deque()

    def start(self, target: Target) -> None:
        """Begin installing ``target`` (from a verified manifest); call :meth:`run` next.

        Raises:
            InvalidEvent: an install is already in flight.
            BadTarget: the target is malformed or a rollback.
        """
        if self.state.step not in install.SETTLED:
            raise InvalidEvent(f"an install is in flight ({self.state.step.value})")
        self.run()
        active = self.fw.read_boot().active
        self._apply(Start(target, active, self.max_boot_attempts))

    def timeout(self) -> None:
        """The in-progress timeout fired: fail, or revert if already switched."""
        self._apply(install.Timeout())

    def abort(self, reason: str) -> None:
        """Abandon the job before the switch (``failed`` with ``reason``).

        Raises:
            InvalidEvent: the install is not in an abandonable step.
        """
        self._apply(install.Abort(reason))

    def refuse(self, job_id: str, reason: str) -> None:
        """Mint and persist a ``failed`` report for a job that was never started.

        Raises:
            InvalidEvent: an install is in flight.
        """
        self._apply(install.Refuse(job_id, reason))

    def acknowledge(self, keys: Iterable[str]) -> int:
        """Drop the reports the hub acknowledged from the outbox (one write for all).

        Keys that are not waiting (already acknowledged, unknown) are skipped.

        Returns:
            How many reports were dropped.
        """
        state, dropped = self.state, 0
        for key in keys:
            if any(report.key == key for report in state.outbox):
                state = install.step(state, ReportSent(key), now=self.hooks.clock()).state
                dropped += 1
        if dropped:
            self.fw.save_state(state)
            self.state = state
        return dropped

    def run(self) -> InstallState:
        """Redo the persisted state's effects and carry the install on.

        Returns when the install is settled, waiting (``verified`` without
        ``auto_install``), or a report could not be delivered and nothing
        else is left to do. Exceptions of the hooks (an interrupted download)
        propagate; calling ``run`` again resumes.
        """
        self._queue = deque(install.redo(self.state))
        while True:
            self._flush_reports()
            if self._queue:
                self._execute(self._queue.popleft())
            elif self.state.step is Step.VERIFIED and self.auto_install:
                self._apply(install.Install())
            else:
                return self.state

    # ---------------------------------------------------------- internals

    def _apply(self, event: Event) -> None:
        transition = install.step(self.state, event, now=self.hooks.clock())
        self.fw.save_state(transition.state)  # write-ahead: persisted before any effect
        self.state = transition.state
        self._queue.extend(transition.effects)

    def _flush_reports(self) -> None:
        for report in self.state.outbox:
            if not self.hooks.send(report):
                return
            self.hooks.crash("report:sent")
            self._apply(ReportSent(report.key))

    def _power_on(self) -> Slot:
        record = self.fw.read_boot()
        _check_consistent(record, self.state)
        booted, slot = power_on(record, self.max_boot_attempts)
        if booted != record:
            self.fw.write_boot(booted)
        return slot

    def _power_cycle(self) -> None:
        self._queue.clear()
        self.running = self._power_on()
        self._queue.extend(install.redo(self.state))

    def _execute(self, effect: Effect) -> None:
        match effect:
            case Download():
                self._download(effect)
            case VerifySlot():
                self._apply(ImageVerified(self._matches(effect.slot)))
            case SwitchBoot():
                self._switch(effect.slot)
            case Reboot():
                self._power_cycle()
            case CheckHealth():
                self._check_health(effect.slot)
            case Confirm():
                self._settle(BootRecord(active=effect.slot), effect.slot)
            case Revert():
                self._settle(BootRecord(active=effect.slot), effect.slot)

    def _target(self) -> Target:
        if self.state.target is None:
            raise StateError("no install target")
        return self.state.target

    def _download(self, effect: Download) -> None:
        target = self._target()
        self.fw.truncate(effect.slot, effect.offset)
        for chunk in self.hooks.fetch(target, effect.offset):
            if self.state.written + len(chunk) <= target.size:
                self.fw.write_at(effect.slot, self.state.written, chunk)
            self._apply(ChunkWritten(len(chunk)))
            if self.state.step is not Step.DOWNLOADING:
                return
        self._apply(DownloadComplete())

    def _matches(self, slot: Slot) -> bool:
        target = self._target()
        digest, size = self.fw.measure(slot)
        return size == target.size and hmac.compare_digest(digest, target.digest)

    def _switch(self, slot: Slot) -> None:
        if not self._matches(slot):
            self._apply(ImageVerified(ok=False))
            return
        record = self.fw.read_boot()
        if record.pending != slot:
            self.fw.write_boot(BootRecord(record.active, slot, attempts=0, confirmed=False))
        self._apply(SlotSwitched())

    def _check_health(self, slot: Slot) -> None:
        if self.running != slot:
            self._apply(Booted(health_ok=False, fell_back=True))
            return
        verdict = self.hooks.health(slot)
        if verdict is None:
            self._apply(BootAttemptWithoutConfirmation())
        else:
            self._apply(Booted(health_ok=verdict))

    def _settle(self, record: BootRecord, slot: Slot) -> None:
        """Confirm or revert: ``slot`` becomes the only boot choice; boot it."""
        if self.fw.read_boot() != record:
            self.fw.write_boot(record)
        if self.running != slot:
            self._power_cycle()


def _check_consistent(record: BootRecord, state: InstallState) -> None:
    if record.pending is None:
        return
    if state.step not in SWITCHED or state.slot != record.pending:
        raise StateError(
            f"boot record names trial slot {record.pending} but the install is "
            f"{state.step.value} on slot {state.slot}"
        )


def _load_boot(doc: Any) -> BootRecord:
    if not isinstance(doc, dict) or set(doc) != {"active", "pending", "attempts", "confirmed"}:
        raise ValueError("not a boot record")
    record = BootRecord(**doc)
    if record.active not in SLOTS or record.pending not in (None, *SLOTS):
        raise ValueError("unknown slot")
    if record.pending == record.active:
        raise ValueError("the trial slot is the active slot")
    if type(record.attempts) is not int or record.attempts < 0:
        raise ValueError("bad attempt counter")
    if record.confirmed is not (record.pending is None):
        raise ValueError("the confirmed flag contradicts the trial slot")
    return record


def _dump_state(state: InstallState) -> dict[str, Any]:
    target = state.target
    return {
        "format": FORMAT_VERSION,
        "device_id": state.device_id,
        "step": state.step.value,
        "target": None if target is None else dataclasses.asdict(target),
        "slot": state.slot,
        "written": state.written,
        "boot_attempts": state.boot_attempts,
        "max_boot_attempts": state.max_boot_attempts,
        "reason": state.reason,
        "report_seq": state.report_seq,
        "confirmed_sequence": state.confirmed_sequence,
        "outbox": [report.to_wire() for report in state.outbox],
    }


_STATE_FIELDS: dict[str, type | tuple[type, ...]] = {
    "device_id": str,
    "step": str,
    "target": (dict, type(None)),
    "slot": (str, type(None)),
    "written": int,
    "boot_attempts": int,
    "max_boot_attempts": int,
    "reason": (str, type(None)),
    "report_seq": int,
    "confirmed_sequence": int,
    "outbox": list,
}


def _load_state(doc: Any) -> InstallState:
    if not isinstance(doc, dict) or doc.get("format") != FORMAT_VERSION:
        raise ValueError("not an install state file of a known format")
    if set(doc) != {"format", *_STATE_FIELDS}:
        raise ValueError("unexpected or missing fields")
    for name, kind in _STATE_FIELDS.items():
        if not isinstance(doc[name], kind) or isinstance(doc[name], bool):
            raise ValueError(f"field {name!r} has the wrong type")
    if doc["slot"] not in (None, *SLOTS):
        raise ValueError("unknown slot")
    return InstallState(
        device_id=doc["device_id"],
        step=Step(doc["step"]),
        target=None if doc["target"] is None else _load_target(doc["target"]),
        slot=doc["slot"],
        written=doc["written"],
        boot_attempts=doc["boot_attempts"],
        max_boot_attempts=doc["max_boot_attempts"],
        reason=doc["reason"],
        report_seq=doc["report_seq"],
        confirmed_sequence=doc["confirmed_sequence"],
        outbox=tuple(StepReport.from_wire(item) for item in doc["outbox"]),
    )


def _load_target(doc: dict[str, Any]) -> Target:
    if set(doc) != {"job_id", "sequence", "digest", "size"}:
        raise ValueError("not a target")
    target = Target(**doc)
    kinds = (str, int, bytes, int)
    values = (target.job_id, target.sequence, target.digest, target.size)
    if not all(type(v) is k for v, k in zip(values, kinds, strict=True)):
        raise ValueError("a target field has the wrong type")
    return target


__all__ = [
    "BOOT_FILE",
    "INSTALL_FILE",
    "SLOT_FILES",
    "BootRecord",
    "CrashHook",
    "FirmwareDir",
    "Hooks",
    "Installer",
    "power_on",
    "resume",
]
