"""The rollout decision core: pure functions of counts, settings and ``now``.

Nothing here touches the database or the clock; :mod:`hub.rollouts.engine`
loads the counts, calls :func:`decide` and applies the answer.

Job states::

    pending ─offer─▶ offered ─▶ downloading ─▶ downloaded ─▶ verified ─▶ installing
        │                                                                   │
        └─(cancel, gate)─▶ cancelled          rebooting ◀───────────────────┘
                                                  │
                            confirmed ◀───────────┘        (success: only this)
    any active state ─▶ failed | reverted | timed_out     (failures)

Reports only move a job forward (a late or repeated ``downloading`` after
``verified`` changes nothing); ``failed`` and ``reverted`` end it from any active
state. A ``timed_out`` or ``cancelled`` job still takes an outcome that changes
what the device runs (``confirmed`` or ``reverted``: it was past ``installing``
when told), so the record says what it really runs; its ``failed`` is the device
abandoning the job as told (``cancelled: <reason>``) and changes nothing.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from hub.firmware.errors import InvalidRollout

ACTIVE_STATES = (
    "offered",
    "downloading",
    "downloaded",
    "verified",
    "installing",
    "rebooting",
)
"""Offered and not finished: these jobs have a deadline."""
FAILURE_STATES = ("failed", "reverted", "timed_out")
FINAL_STEPS = ("confirmed", "failed", "reverted")
LATE_OUTCOMES = ("confirmed", "reverted")
"""What a timed-out or cancelled job still takes from its device: what the device now runs.
A ``failed`` report there is the device abandoning the job as it was told to."""
TERMINAL_STATES = ("confirmed", *FAILURE_STATES, "cancelled")
CANCELLABLE_STATES = ("offered", "downloading", "downloaded", "verified")
"""Active states a cancel withdraws (a device past ``verified`` finishes and reports)."""
_RANK = {state: rank for rank, state in enumerate(("pending", *ACTIVE_STATES))}


def next_job_state(state: str, step: str) -> str | None:
    """The job state after a report of ``step``, or ``None`` when it changes nothing.

    Args:
        state: the job's current state.
        step: the reported step (one of ``REPORT_STEPS``).
    """
    if state in ACTIVE_STATES:
        if step in FINAL_STEPS:
            return step
        if step in _RANK and _RANK[step] > _RANK[state]:
            return step
        return None
    if state in ("timed_out", "cancelled") and step in LATE_OUTCOMES:
        return step
    return None


# --- waves ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WaveSpec:
    """A wave's requested share: a percentage of the targets or an explicit size."""

    percent: int | None = None
    size: int | None = None


def plan_waves(specs: Sequence[WaveSpec], total: int) -> list[int]:
    """Split ``total`` targets into waves, in order.

    A percentage wave gets ``ceil(percent * total / 100)`` devices, a sized wave
    its size, each capped by what is left; the last wave always takes every
    remaining device, so no target is left without a wave.
    """
    planned: list[int] = []
    left = total
    for number, spec in enumerate(specs):
        if number == len(specs) - 1:
            want = left
        elif spec.size is not None:
            want = spec.size
        else:
            want = -(-(spec.percent or 0) * total // 100)
        take = min(left, want)
        planned.append(take)
        left -= take
    return planned


# --- maintenance windows --------------------------------------------------------------------

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_TIME = re.compile(r"([01]\d|2[0-3]):([0-5]\d)")


@dataclass(frozen=True, slots=True)
class Window:
    """A weekly window in UTC: on ``days`` (0 = Monday) from ``start`` to ``end`` minutes.

    ``end <= start`` means the window runs past midnight into the next day.
    """

    days: frozenset[int]
    start: int
    end: int

    def contains(self, now: datetime) -> bool:
        """Whether ``now`` (aware) falls inside this window."""
        minute = now.hour * 60 + now.minute
        today = now.weekday()
        if self.start < self.end:
            return today in self.days and self.start <= minute < self.end
        yesterday = (today - 1) % 7
        return (today in self.days and minute >= self.start) or (
            yesterday in self.days and minute < self.end
        )


def _minutes(text: Any, what: str) -> int:
    match = _TIME.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise InvalidRollout(f"window {what} must be HH:MM (UTC), not {text!r}")
    return int(match.group(1)) * 60 + int(match.group(2))


def parse_window(raw: dict[str, Any]) -> Window:
    """Read ``{"days": ["mon", ...], "start": "HH:MM", "end": "HH:MM"}`` (days default: all).

    Raises:
        InvalidRollout: unknown day, bad time, or ``start == end``.
    """
    days = raw.get("days") or list(DAYS)
    if not isinstance(days, list) or any(day not in DAYS for day in days):
        raise InvalidRollout(f"window days must be among {', '.join(DAYS)}")
    start, end = _minutes(raw.get("start"), "start"), _minutes(raw.get("end"), "end")
    if start == end:
        raise InvalidRollout("a window's start and end must differ")
    return Window(frozenset(DAYS.index(day) for day in days), start, end)


def in_windows(windows: Sequence[Window], now: datetime) -> bool:
    """Whether offers may go out at ``now``: no windows means always."""
    return not windows or any(window.contains(now) for window in windows)


# --- decisions ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Counts:
    """Jobs by outcome class (current attempts only)."""

    pending: int = 0
    active: int = 0
    confirmed: int = 0
    failed: int = 0
    cancelled: int = 0

    @property
    def finished(self) -> int:
        """Jobs with an outcome that counts: confirmed or failed."""
        return self.confirmed + self.failed

    @property
    def considered(self) -> int:
        """Jobs that count towards the success criterion (cancelled ones do not)."""
        return self.pending + self.active + self.finished

    @classmethod
    def of(cls, by_state: dict[str, int]) -> Counts:
        """Group per-state counts."""
        return cls(
            pending=by_state.get("pending", 0),
            active=sum(by_state.get(state, 0) for state in ACTIVE_STATES),
            confirmed=by_state.get("confirmed", 0),
            failed=sum(by_state.get(state, 0) for state in FAILURE_STATES),
            cancelled=by_state.get("cancelled", 0),
        )


@dataclass(frozen=True, slots=True)
class Thresholds:
    """A rollout's success criterion and failure threshold."""

    success_percent: int
    failure_percent: int
    failure_min_sample: int
    failure_action: str  # "pause" or "abort"


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What the engine knows about one running rollout at one instant.

    Attributes:
        wave: the current wave's number (0-based).
        wave_count: how many waves the rollout has.
        current: the current wave's jobs.
        overall: every wave's jobs.
        offerable: pending jobs of the current and earlier waves.
        base_failures: failures already judged by an operator (at resume/retry).
        base_finished: finished jobs already judged.
        in_window: whether a maintenance window is open.
    """

    wave: int
    wave_count: int
    current: Counts
    overall: Counts
    offerable: int
    base_failures: int = 0
    base_finished: int = 0
    in_window: bool = True


class Action(StrEnum):
    """What the engine does next with a running rollout."""

    WAIT = "wait"
    OFFER = "offer"
    ADVANCE = "advance"
    COMPLETE = "complete"
    PAUSE = "pause"
    ABORT = "abort"


@dataclass(frozen=True, slots=True)
class Decision:
    """An action and, for pauses, aborts and completions, why."""

    action: Action
    reason: str = ""


def threshold_tripped(snapshot: Snapshot, thresholds: Thresholds) -> str | None:
    """The reason the failure threshold trips, or ``None``.

    Counted over every wave since the last operator decision: at least
    ``failure_min_sample`` finished jobs, at least one failure, and failures
    at or above ``failure_percent`` of the finished jobs.
    """
    failures = max(0, snapshot.overall.failed - snapshot.base_failures)
    finished = max(0, snapshot.overall.finished - snapshot.base_finished)
    if failures == 0 or finished < thresholds.failure_min_sample:
        return None
    if failures * 100 < thresholds.failure_percent * finished:
        return None
    return (
        f"failure threshold: {failures} of {finished} finished devices failed"
        f" (threshold {thresholds.failure_percent}%, minimum sample"
        f" {thresholds.failure_min_sample})"
    )


def _success_met(counts: Counts, percent: int) -> bool:
    return counts.considered == 0 or counts.confirmed * 100 >= percent * counts.considered


def decide(snapshot: Snapshot, thresholds: Thresholds) -> Decision:
    """The next action for a running rollout (see the rules in ``docs/firmware.md``)."""
    tripped = threshold_tripped(snapshot, thresholds)
    if tripped is not None:
        action = Action.ABORT if thresholds.failure_action == "abort" else Action.PAUSE
        return Decision(action, tripped)
    current = snapshot.current
    wave_done = current.pending == 0 and current.active == 0
    last = snapshot.wave >= snapshot.wave_count - 1
    met = _success_met(current, thresholds.success_percent)
    if last and wave_done and snapshot.offerable == 0 and snapshot.overall.active == 0:
        total = snapshot.overall.considered
        return Decision(
            Action.COMPLETE, f"{snapshot.overall.confirmed} of {total} targeted devices confirmed"
        )
    if not last and met:
        return Decision(Action.ADVANCE)
    if not last and wave_done and snapshot.offerable == 0:
        return Decision(
            Action.PAUSE,
            f"wave {snapshot.wave + 1} finished with {current.confirmed} of"
            f" {current.considered} confirmed, below the {thresholds.success_percent}%"
            " success criterion",
        )
    if snapshot.offerable and snapshot.in_window:
        return Decision(Action.OFFER)
    return Decision(Action.WAIT)
