"""The A/B install state machine: a pure core, no IO (python-tuf style).

:func:`step` takes an :class:`InstallState` and one event and returns a
:class:`Transition`: the next state, the effects the orchestrator
(:mod:`device_agent.firmware.slots`) must carry out, and the step reports
minted on the way (also appended to the state's outbox). :func:`redo` gives
the effects that bring the world in line with a persisted state; they are
idempotent, which is what makes "persist, then act" safe across crashes.

::

    idle ──start──▶ downloading ──download_complete──▶ downloaded
                      │ chunk_written (loop)              │ image_verified(ok)
                      ▼                                   ▼
                    failed ◀──image_verified(bad)──── verified ──install──▶ installing
                                                                              │ slot_switched
                                                                              ▼
        confirmed ◀──booted(health ok)── rebooting ◀─boot_attempt_without_confirmation (< N)
                                           │ booted(health bad / fell back), N attempts, timeout
                                           ▼
                                        reverted

Rules the core enforces:

* only the inactive slot (the one not active at ``start``) is written;
* the boot slot is switched (:class:`SwitchBoot`) only from ``installing``,
  reachable only through ``image_verified(ok=True)`` for the same job;
* :class:`Confirm` is emitted only for ``booted(health_ok=True)`` in the new
  slot; success (``confirmed``) exists only after it;
* a failed health check, a bootloader fallback, ``N`` boot attempts without
  confirmation or a timeout after the switch end in ``reverted`` with a
  :class:`Revert` to the old slot; before the switch they end in ``failed``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal, TypeAlias

from device_agent.errors import AgentError
from device_agent.firmware.report import ReportStep, StepReport, mint_key

Slot: TypeAlias = Literal["a", "b"]
SLOTS: tuple[Slot, Slot] = ("a", "b")
DIGEST_SIZE = 32
DEFAULT_MAX_BOOT_ATTEMPTS = 3


class InstallError(AgentError):
    """Base class of the install state machine's errors."""


class InvalidEvent(InstallError):
    """The event is not allowed in the current state; nothing changed."""


class BadTarget(InstallError):
    """The target is malformed, or older than the confirmed image (rollback)."""


class Step(StrEnum):
    """The states of an install."""

    IDLE = "idle"
    DOWNLOADING = "downloading"
    DOWNLOADED = "downloaded"
    VERIFIED = "verified"
    INSTALLING = "installing"
    REBOOTING = "rebooting"
    CONFIRMED = "confirmed"
    REVERTED = "reverted"
    FAILED = "failed"


#: States in which no install is in flight; ``start`` is allowed from these.
SETTLED = frozenset({Step.IDLE, Step.CONFIRMED, Step.REVERTED, Step.FAILED})
#: States in which the boot record may name the new slot.
SWITCHED = frozenset({Step.INSTALLING, Step.REBOOTING, Step.CONFIRMED, Step.REVERTED, Step.FAILED})


def other(slot: Slot) -> Slot:
    """The other slot of the A/B pair."""
    return "b" if slot == "a" else "a"


@dataclass(frozen=True)
class Target:
    """The image to install, as named by a verified SUIT manifest.

    Attributes:
        job_id: The hub's install job.
        sequence: The manifest's sequence number (anti-rollback).
        digest: SHA-256 of the image.
        size: Exact size of the image in bytes.
    """

    job_id: str
    sequence: int
    digest: bytes
    size: int


# ----------------------------------------------------------------- events


@dataclass(frozen=True)
class Start:
    """Begin installing ``target`` into the slot that is not ``active``."""

    target: Target
    active: Slot
    max_boot_attempts: int = DEFAULT_MAX_BOOT_ATTEMPTS


@dataclass(frozen=True)
class ChunkWritten:
    """``n`` more bytes are durably in the new slot (after the ones before)."""

    n: int


@dataclass(frozen=True)
class DownloadComplete:
    """The source has no more bytes."""


@dataclass(frozen=True)
class ImageVerified:
    """The new slot's digest and size were checked against the target."""

    ok: bool


@dataclass(frozen=True)
class Install:
    """Go ahead and switch to the verified image (e.g. inside a maintenance window)."""


@dataclass(frozen=True)
class SlotSwitched:
    """The boot record now names the new slot as the trial slot."""


@dataclass(frozen=True)
class Booted:
    """The device came up after the switch and ran its health check.

    Attributes:
        health_ok: The new image passed its health check.
        fell_back: The bootloader booted the old slot instead of the new one.
    """

    health_ok: bool
    fell_back: bool = False


@dataclass(frozen=True)
class BootAttemptWithoutConfirmation:
    """A boot of the new slot ended without a health verdict."""


@dataclass(frozen=True)
class Timeout:
    """The install took too long in its current step."""


@dataclass(frozen=True)
class Abort:
    """Give up the job before the switch (cancelled by the hub, download stalled)."""

    reason: str


@dataclass(frozen=True)
class Refuse:
    """Report an offered job as failed without starting it (the envelope was refused).

    Allowed only while settled; the state's step and target stay as they are,
    only a ``failed`` report for ``job_id`` is minted.
    """

    job_id: str
    reason: str


@dataclass(frozen=True)
class ReportSent:
    """The hub acknowledged the report with this key; drop it from the outbox."""

    key: str


Event: TypeAlias = (
    Start
    | ChunkWritten
    | DownloadComplete
    | ImageVerified
    | Install
    | SlotSwitched
    | Booted
    | BootAttemptWithoutConfirmation
    | Timeout
    | Abort
    | Refuse
    | ReportSent
)

# ---------------------------------------------------------------- effects


@dataclass(frozen=True)
class Download:
    """Cut ``slot`` to ``offset`` bytes and download the rest of the image into it."""

    slot: Slot
    offset: int


@dataclass(frozen=True)
class VerifySlot:
    """Hash ``slot`` and answer with :class:`ImageVerified`."""

    slot: Slot
    digest: bytes
    size: int


@dataclass(frozen=True)
class SwitchBoot:
    """Make ``slot`` the trial slot of the boot record (attempts reset to 0)."""

    slot: Slot


@dataclass(frozen=True)
class Reboot:
    """Power-cycle the device (the bootloader picks the slot)."""


@dataclass(frozen=True)
class CheckHealth:
    """See which slot booted; health-check it if it is ``slot``; answer with an event."""

    slot: Slot


@dataclass(frozen=True)
class Confirm:
    """Make ``slot`` the confirmed active slot (reboot into it if not running it)."""

    slot: Slot


@dataclass(frozen=True)
class Revert:
    """Make ``slot`` (the old one) the only boot choice (reboot into it if needed)."""

    slot: Slot


Effect: TypeAlias = Download | VerifySlot | SwitchBoot | Reboot | CheckHealth | Confirm | Revert


# ------------------------------------------------------------------ state


@dataclass(frozen=True)
class InstallState:
    """Everything the install persists in ``install.cbor``.

    Attributes:
        device_id: The device (part of every report key).
        step: The current state.
        target: The image being installed (``None`` only when idle).
        slot: The slot being written: the inactive one at ``start``.
        written: Bytes of the image durably in ``slot``.
        boot_attempts: Boots of the new slot without a health verdict.
        max_boot_attempts: ``N``: boot attempts before reverting.
        reason: Why the install failed or reverted.
        report_seq: Reports minted so far (the next report's index).
        confirmed_sequence: Sequence number of the last confirmed image.
        outbox: Reports minted but not yet acknowledged by the hub.
    """

    device_id: str
    step: Step = Step.IDLE
    target: Target | None = None
    slot: Slot | None = None
    written: int = 0
    boot_attempts: int = 0
    max_boot_attempts: int = DEFAULT_MAX_BOOT_ATTEMPTS
    reason: str | None = None
    report_seq: int = 0
    confirmed_sequence: int = 0
    outbox: tuple[StepReport, ...] = ()

    @property
    def old_slot(self) -> Slot | None:
        """The slot that was active when the install started."""
        return None if self.slot is None else other(self.slot)


@dataclass(frozen=True)
class Transition:
    """The outcome of one event: new state, effects to run, reports minted."""

    state: InstallState
    effects: tuple[Effect, ...] = ()
    reports: tuple[StepReport, ...] = ()


# ------------------------------------------------------------ transitions


def _move(
    state: InstallState,
    to: Step,
    now: int,
    *effects: Effect,
    reason: str | None = None,
) -> Transition:
    """Enter ``to``, minting its report and appending it to the outbox."""
    assert state.target is not None
    report = StepReport(
        job_id=state.target.job_id,
        step=ReportStep(to.value),
        reason=reason,
        key=mint_key(state.device_id, state.target.job_id, state.report_seq),
        at=now,
        installed_seq=state.confirmed_sequence,
    )
    new = dataclasses.replace(
        state,
        step=to,
        reason=reason,
        report_seq=state.report_seq + 1,
        outbox=(*state.outbox, report),
    )
    return Transition(new, effects, (report,))


def _require(state: InstallState, event: Event, *allowed: Step) -> None:
    if state.step not in allowed:
        raise InvalidEvent(f"{type(event).__name__} is not allowed in state {state.step.value}")


def _check_target(state: InstallState, event: Start) -> None:
    target = event.target
    if not target.job_id:
        raise BadTarget("the target has no job id")
    if len(target.digest) != DIGEST_SIZE or target.size <= 0:
        raise BadTarget("the target needs a SHA-256 digest and a positive size")
    if target.sequence <= state.confirmed_sequence:
        raise BadTarget(
            f"sequence {target.sequence} is not newer than the confirmed "
            f"{state.confirmed_sequence} (rollback)"
        )
    if event.active not in SLOTS or event.max_boot_attempts < 1:
        raise BadTarget("bad active slot or boot attempt limit")


def _on_start(state: InstallState, event: Start, now: int) -> Transition:
    _require(state, event, *SETTLED)
    _check_target(state, event)
    slot = other(event.active)
    begun = dataclasses.replace(
        state,
        target=event.target,
        slot=slot,
        written=0,
        boot_attempts=0,
        max_boot_attempts=event.max_boot_attempts,
    )
    return _move(begun, Step.DOWNLOADING, now, Download(slot, 0))


def _on_chunk(state: InstallState, event: ChunkWritten, now: int) -> Transition:
    _require(state, event, Step.DOWNLOADING)
    assert state.target is not None
    if event.n < 0:
        raise InvalidEvent("a chunk cannot have a negative size")
    if state.written + event.n > state.target.size:
        return _fail(state, now, "payload larger than declared")
    return Transition(dataclasses.replace(state, written=state.written + event.n))


def _on_complete(state: InstallState, event: DownloadComplete, now: int) -> Transition:
    _require(state, event, Step.DOWNLOADING)
    assert state.target is not None and state.slot is not None
    if state.written != state.target.size:
        reason = f"size mismatch: {state.written} of {state.target.size} bytes"
        return _fail(state, now, reason)
    verify = VerifySlot(state.slot, state.target.digest, state.target.size)
    return _move(state, Step.DOWNLOADED, now, verify)


def _on_verified(state: InstallState, event: ImageVerified, now: int) -> Transition:
    _require(state, event, Step.DOWNLOADED, Step.INSTALLING)
    if state.step is Step.INSTALLING:
        if event.ok:
            raise InvalidEvent("the image was verified already")
        return _fail(state, now, "the image changed after verification")
    if not event.ok:
        return _fail(state, now, "digest mismatch")
    return _move(state, Step.VERIFIED, now)


def _on_install(state: InstallState, event: Install, now: int) -> Transition:
    _require(state, event, Step.VERIFIED)
    assert state.slot is not None
    return _move(state, Step.INSTALLING, now, SwitchBoot(state.slot))


def _on_switched(state: InstallState, event: SlotSwitched, now: int) -> Transition:
    _require(state, event, Step.INSTALLING)
    return _move(state, Step.REBOOTING, now, Reboot())


def _on_booted(state: InstallState, event: Booted, now: int) -> Transition:
    _require(state, event, Step.REBOOTING)
    assert state.slot is not None
    if event.fell_back:
        return _revert(state, now, "the bootloader fell back to the old slot")
    if not event.health_ok:
        return _revert(state, now, "health check failed")
    sequence = state.target.sequence if state.target else 0
    confirmed = dataclasses.replace(state, confirmed_sequence=sequence)
    return _move(confirmed, Step.CONFIRMED, now, Confirm(state.slot))


def _on_attempt(state: InstallState, event: BootAttemptWithoutConfirmation, now: int) -> Transition:
    _require(state, event, Step.REBOOTING)
    attempts = state.boot_attempts + 1
    counted = dataclasses.replace(state, boot_attempts=attempts)
    if attempts >= state.max_boot_attempts:
        reason = f"no confirmation within {state.max_boot_attempts} boot attempts"
        return _revert(counted, now, reason)
    return Transition(counted, (Reboot(),))


def _on_timeout(state: InstallState, event: Timeout, now: int) -> Transition:
    _require(state, event, *(set(Step) - SETTLED))
    reason = f"timed out while {state.step.value}"
    if state.step in (Step.INSTALLING, Step.REBOOTING):
        return _revert(state, now, reason)
    return _fail(state, now, reason)


#: States from which a job may still be abandoned: nothing has touched the boot record.
ABANDONABLE = frozenset({Step.DOWNLOADING, Step.DOWNLOADED, Step.VERIFIED})


def _on_abort(state: InstallState, event: Abort, now: int) -> Transition:
    _require(state, event, *ABANDONABLE)
    return _fail(state, now, _reason(event.reason))


def _on_refuse(state: InstallState, event: Refuse, now: int) -> Transition:
    _require(state, event, *SETTLED)
    if not event.job_id:
        raise InvalidEvent("a refusal needs a job id")
    report = StepReport(
        job_id=event.job_id,
        step=ReportStep.FAILED,
        reason=_reason(event.reason),
        key=mint_key(state.device_id, event.job_id, state.report_seq),
        at=now,
        installed_seq=state.confirmed_sequence,
    )
    new = dataclasses.replace(
        state, report_seq=state.report_seq + 1, outbox=(*state.outbox, report)
    )
    return Transition(new, (), (report,))


def _reason(text: str) -> str:
    return text.strip() or "unspecified"


def _on_sent(state: InstallState, event: ReportSent) -> Transition:
    outbox = tuple(r for r in state.outbox if r.key != event.key)
    if len(outbox) == len(state.outbox):
        raise InvalidEvent(f"no report with key {event.key!r} is waiting")
    return Transition(dataclasses.replace(state, outbox=outbox))


def _fail(state: InstallState, now: int, reason: str) -> Transition:
    """End in ``failed``; the revert clears a trial slot if one might be set."""
    assert state.old_slot is not None
    effects: tuple[Effect, ...] = (Revert(state.old_slot),) if state.step in SWITCHED else ()
    return _move(state, Step.FAILED, now, *effects, reason=reason)


def _revert(state: InstallState, now: int, reason: str) -> Transition:
    assert state.old_slot is not None
    return _move(state, Step.REVERTED, now, Revert(state.old_slot), reason=reason)


def step(state: InstallState, event: Event, *, now: int) -> Transition:  # noqa: PLR0911
    """Apply one event to the install state.

    Args:
        state: The current (persisted) state.
        event: What happened.
        now: The time stamped on the reports minted by this transition.

    Returns:
        The next state, the effects to carry out in order, the new reports.

    Raises:
        InvalidEvent: the event is not allowed in ``state``; nothing changed.
        BadTarget: ``Start`` with a malformed or rolled-back target.
    """
    match event:
        case Start():
            return _on_start(state, event, now)
        case ChunkWritten():
            return _on_chunk(state, event, now)
        case DownloadComplete():
            return _on_complete(state, event, now)
        case ImageVerified():
            return _on_verified(state, event, now)
        case Install():
            return _on_install(state, event, now)
        case SlotSwitched():
            return _on_switched(state, event, now)
        case Booted():
            return _on_booted(state, event, now)
        case BootAttemptWithoutConfirmation():
            return _on_attempt(state, event, now)
        case Timeout():
            return _on_timeout(state, event, now)
        case Abort():
            return _on_abort(state, event, now)
        case Refuse():
            return _on_refuse(state, event, now)
        case ReportSent():
            return _on_sent(state, event)
    raise InvalidEvent(f"unknown event {event!r}")


def redo(state: InstallState) -> tuple[Effect, ...]:
    """The idempotent effects that bring the world in line with ``state``.

    Run after every (re)start: a persisted state whose effects may or may not
    have happened before a crash is completed by running these again.
    """
    target, slot = state.target, state.slot
    if target is None or slot is None:
        return ()
    effects: dict[Step, tuple[Effect, ...]] = {
        Step.DOWNLOADING: (Download(slot, state.written),),
        Step.DOWNLOADED: (VerifySlot(slot, target.digest, target.size),),
        Step.INSTALLING: (SwitchBoot(slot),),
        Step.REBOOTING: (CheckHealth(slot),),
        Step.CONFIRMED: (Confirm(slot),),
        Step.REVERTED: (Revert(other(slot)),),
        Step.FAILED: (Revert(other(slot)),),
    }
    return effects.get(state.step, ())


def validate(state: InstallState) -> None:
    """Check that a (loaded) state is one the machine can be in.

    Raises:
        InstallError: the state is inconsistent (tampered with or corrupt).
    """
    target = state.target
    if (target is None) != (state.step is Step.IDLE) or (target is None) != (state.slot is None):
        raise InstallError("a target and slot exist exactly when the install is not idle")
    if state.max_boot_attempts < 1 or not 0 <= state.boot_attempts <= state.max_boot_attempts:
        raise InstallError("boot attempt counters out of range")
    if target is not None:
        if len(target.digest) != DIGEST_SIZE or target.size <= 0:
            raise InstallError("the stored target is malformed")
        done = state.step not in (Step.DOWNLOADING, Step.FAILED)
        if not 0 <= state.written <= target.size or (done and state.written != target.size):
            raise InstallError("the stored download progress contradicts the target")
    keys = [r.key for r in state.outbox]
    if len(set(keys)) != len(keys) or len(keys) > state.report_seq:
        raise InstallError("the stored outbox is inconsistent")
    if state.reason is not None and state.step not in (Step.FAILED, Step.REVERTED):
        raise InstallError("only failed or reverted installs carry a reason")


__all__ = [
    "ABANDONABLE",
    "DEFAULT_MAX_BOOT_ATTEMPTS",
    "DIGEST_SIZE",
    "SETTLED",
    "SLOTS",
    "SWITCHED",
    "Abort",
    "BadTarget",
    "BootAttemptWithoutConfirmation",
    "Booted",
    "CheckHealth",
    "ChunkWritten",
    "Confirm",
    "Download",
    "DownloadComplete",
    "Effect",
    "Event",
    "ImageVerified",
    "Install",
    "InstallError",
    "InstallState",
    "InvalidEvent",
    "Reboot",
    "Refuse",
    "ReportSent",
    "Revert",
    "Slot",
    "SlotSwitched",
    "Start",
    "Step",
    "SwitchBoot",
    "Target",
    "Timeout",
    "Transition",
    "VerifySlot",
    "other",
    "redo",
    "step",
]
