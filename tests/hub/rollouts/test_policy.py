"""The pure decision core, as tables: job transitions, waves, windows, decisions."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from hub.firmware.errors import InvalidRollout, InvalidVersion
from hub.firmware.semver import parse_version
from hub.rollouts.policy import (
    Action,
    Counts,
    Snapshot,
    Thresholds,
    WaveSpec,
    decide,
    in_windows,
    next_job_state,
    parse_window,
    plan_waves,
)


@pytest.mark.parametrize(
    ("state", "step", "expected"),
    [
        ("offered", "downloading", "downloading"),
        ("offered", "verified", "verified"),  # a skipped step report is fine
        ("downloading", "downloading", None),  # a repeat changes nothing
        ("verified", "downloaded", None),  # late and out of order
        ("rebooting", "confirmed", "confirmed"),
        ("offered", "confirmed", "confirmed"),
        ("downloading", "failed", "failed"),
        ("rebooting", "reverted", "reverted"),
        ("installing", "installing", None),
        ("pending", "downloading", None),  # a device cannot know a job not offered
        ("pending", "confirmed", None),
        ("confirmed", "failed", None),  # a finished job stays finished
        ("failed", "confirmed", None),
        ("reverted", "confirmed", None),
        ("timed_out", "confirmed", "confirmed"),  # what the device now runs counts
        ("timed_out", "reverted", "reverted"),
        ("timed_out", "failed", None),  # the device abandoning the job, as it was told
        ("timed_out", "downloading", None),
        ("cancelled", "confirmed", "confirmed"),
        ("cancelled", "reverted", "reverted"),
        ("cancelled", "failed", None),  # "cancelled: not_entitled" is not a failed install
        ("cancelled", "installing", None),
    ],
)
def test_next_job_state(state: str, step: str, expected: str | None) -> None:
    assert next_job_state(state, step) == expected


@pytest.mark.parametrize(
    ("specs", "total", "expected"),
    [
        ([WaveSpec(percent=100)], 7, [7]),
        ([WaveSpec(percent=10), WaveSpec(percent=90)], 100, [10, 90]),
        ([WaveSpec(percent=10), WaveSpec(percent=40), WaveSpec(percent=50)], 3, [1, 2, 0]),
        ([WaveSpec(percent=1), WaveSpec(percent=99)], 5, [1, 4]),  # ceil: never an empty canary
        ([WaveSpec(size=2), WaveSpec(percent=50), WaveSpec(size=1)], 10, [2, 5, 3]),
        ([WaveSpec(size=50), WaveSpec(size=50)], 10, [10, 0]),
        ([WaveSpec(percent=20), WaveSpec(percent=20)], 10, [2, 8]),  # the last takes the rest
        ([WaveSpec(percent=50), WaveSpec(size=1)], 0, [0, 0]),
    ],
)
def test_plan_waves(specs: list[WaveSpec], total: int, expected: list[int]) -> None:
    planned = plan_waves(specs, total)
    assert planned == expected
    assert sum(planned) == total


def _at(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2030, 1, 7 + day, hour, minute, tzinfo=UTC)  # 2030-01-07 is a Monday


@pytest.mark.parametrize(
    ("window", "moment", "inside"),
    [
        ({"start": "02:00", "end": "04:00"}, _at(0, 2), True),
        ({"start": "02:00", "end": "04:00"}, _at(0, 3, 59), True),
        ({"start": "02:00", "end": "04:00"}, _at(0, 4), False),
        ({"start": "02:00", "end": "04:00"}, _at(0, 1, 59), False),
        ({"days": ["sat", "sun"], "start": "00:00", "end": "23:59"}, _at(5, 12), True),
        ({"days": ["sat", "sun"], "start": "00:00", "end": "23:59"}, _at(4, 12), False),
        ({"days": ["fri"], "start": "22:00", "end": "02:00"}, _at(4, 23), True),
        ({"days": ["fri"], "start": "22:00", "end": "02:00"}, _at(5, 1), True),  # Saturday 01:00
        ({"days": ["fri"], "start": "22:00", "end": "02:00"}, _at(5, 2), False),
        ({"days": ["fri"], "start": "22:00", "end": "02:00"}, _at(4, 1), False),  # Friday 01:00
        (
            {"days": ["sun"], "start": "23:00", "end": "01:00"},
            _at(0, 0, 30),
            True,
        ),  # wraps the week
    ],
)
def test_windows(window: dict[str, object], moment: datetime, inside: bool) -> None:
    assert in_windows([parse_window(window)], moment) is inside


def test_no_window_means_always_and_several_windows_combine() -> None:
    assert in_windows([], _at(2, 13))
    windows = [
        parse_window({"start": "01:00", "end": "02:00"}),
        parse_window({"start": "13:00", "end": "14:00"}),
    ]
    assert in_windows(windows, _at(2, 13, 30)) and not in_windows(windows, _at(2, 12))


@pytest.mark.parametrize(
    "raw",
    [
        {"start": "25:00", "end": "01:00"},
        {"start": "1:00", "end": "02:00"},
        {"start": "01:00", "end": "01:00"},
        {"days": ["monday"], "start": "01:00", "end": "02:00"},
        {"end": "02:00"},
    ],
)
def test_bad_windows(raw: dict[str, object]) -> None:
    with pytest.raises(InvalidRollout):
        parse_window(raw)


T = Thresholds(success_percent=90, failure_percent=20, failure_min_sample=5, failure_action="abort")


def snap(
    current: Counts,
    overall: Counts | None = None,
    *,
    wave: int = 0,
    waves: int = 3,
    offerable: int | None = None,
    window: bool = True,
    base: tuple[int, int] = (0, 0),
) -> Snapshot:
    return Snapshot(
        wave=wave,
        wave_count=waves,
        current=current,
        overall=overall or current,
        offerable=current.pending if offerable is None else offerable,
        base_failures=base[0],
        base_finished=base[1],
        in_window=window,
    )


@pytest.mark.parametrize(
    ("snapshot", "thresholds", "action"),
    [
        # A fresh wave: offer inside the window, wait outside it.
        (snap(Counts(pending=10)), T, Action.OFFER),
        (snap(Counts(pending=10), window=False), T, Action.WAIT),
        # Devices working: wait.
        (snap(Counts(active=10)), T, Action.WAIT),
        # Success criterion met (9 of 10 = 90%): advance, stragglers go on.
        (snap(Counts(active=1, confirmed=9)), T, Action.ADVANCE),
        (snap(Counts(active=2, confirmed=8)), T, Action.WAIT),
        # Cancelled jobs do not count: 9 of 9.
        (snap(Counts(confirmed=9, cancelled=5)), T, Action.ADVANCE),
        (snap(Counts(cancelled=5)), T, Action.ADVANCE),  # nothing left to judge
        # Wave over below the criterion: pause for a human.
        (snap(Counts(confirmed=17, failed=3)), Thresholds(90, 50, 5, "abort"), Action.PAUSE),
        # Failure threshold: 1 of 4 finished is below the minimum sample of 5.
        (snap(Counts(active=6, confirmed=3, failed=1)), T, Action.WAIT),
        # 1 failure of 5 finished = 20%: trips; the action decides pause or abort.
        (snap(Counts(active=5, confirmed=4, failed=1)), T, Action.ABORT),
        (
            snap(Counts(active=5, confirmed=4, failed=1)),
            Thresholds(90, 20, 5, "pause"),
            Action.PAUSE,
        ),
        # Already-judged failures (an operator resumed) do not count again.
        (snap(Counts(active=5, confirmed=4, failed=1), base=(1, 5)), T, Action.WAIT),
        (snap(Counts(active=1, confirmed=9, failed=2), base=(1, 5)), T, Action.WAIT),
        # failure_percent 0: any failure after the minimum sample trips.
        (
            snap(Counts(confirmed=9, failed=1), waves=1),
            Thresholds(90, 0, 10, "pause"),
            Action.PAUSE,
        ),
        (snap(Counts(confirmed=10), waves=1), Thresholds(90, 0, 10, "pause"), Action.COMPLETE),
        # The threshold is judged over every wave, not just the current one.
        (
            snap(Counts(pending=5), Counts(pending=5, confirmed=2, failed=3), wave=1),
            T,
            Action.ABORT,
        ),
        # Last wave: complete once nothing is pending or active anywhere.
        (snap(Counts(confirmed=10), wave=2), T, Action.COMPLETE),
        (
            snap(Counts(confirmed=7, failed=1), wave=2),
            Thresholds(90, 50, 5, "abort"),
            Action.COMPLETE,
        ),
        (snap(Counts(confirmed=10), Counts(confirmed=10, active=1), wave=2), T, Action.WAIT),
        (snap(Counts(confirmed=10), wave=2, offerable=1), T, Action.OFFER),  # a retried device
        (snap(Counts(confirmed=10), wave=2, offerable=1, window=False), T, Action.WAIT),
    ],
)
def test_decide(snapshot: Snapshot, thresholds: Thresholds, action: Action) -> None:
    decision = decide(snapshot, thresholds)
    assert decision.action is action, decision
    if action in (Action.PAUSE, Action.ABORT, Action.COMPLETE):
        assert decision.reason


def test_reasons_say_why() -> None:
    tripped = decide(snap(Counts(active=5, confirmed=4, failed=1)), T)
    assert "1 of 5" in tripped.reason and "20%" in tripped.reason
    below = decide(snap(Counts(confirmed=17, failed=3)), Thresholds(90, 50, 5, "abort"))
    assert "wave 1" in below.reason and "17 of 20" in below.reason


@pytest.mark.parametrize(
    ("lower", "higher"),
    [
        ("1.0.0", "1.0.1"),
        ("1.0.0-alpha", "1.0.0"),
        ("1.0.0-alpha", "1.0.0-alpha.1"),
        ("1.0.0-alpha.1", "1.0.0-alpha.beta"),
        ("1.0.0-beta.2", "1.0.0-beta.11"),
        ("1.0.0-rc.1", "1.0.0"),
        ("1.9.0", "1.10.0"),
        ("0.9.9", "1.0.0"),
    ],
)
def test_semver_precedence(lower: str, higher: str) -> None:
    assert parse_version(lower) < parse_version(higher)
    assert not parse_version(higher) < parse_version(lower)


def test_semver_build_metadata_is_ignored_for_precedence() -> None:
    assert parse_version("1.0.0+a") == parse_version("1.0.0+b")
    assert str(parse_version("1.2.3-rc.1+build.5")) == "1.2.3-rc.1+build.5"


@pytest.mark.parametrize(
    "text",
    ["1", "1.0", "1.0.0.0", "v1.0.0", "01.0.0", "1.0.0-", "1.0.0-01", "", "1.0.0 ", "x" * 65],
)
def test_semver_refusals(text: str) -> None:
    with pytest.raises(InvalidVersion):
        parse_version(text)
