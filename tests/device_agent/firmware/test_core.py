"""The pure install core: transitions, refusals, and a hypothesis state machine."""

import dataclasses

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from device_agent.firmware import install
from device_agent.firmware.install import (
    BadTarget,
    BootAttemptWithoutConfirmation,
    Booted,
    ChunkWritten,
    Confirm,
    Download,
    DownloadComplete,
    ImageVerified,
    Install,
    InstallState,
    InvalidEvent,
    Reboot,
    ReportSent,
    Revert,
    SlotSwitched,
    Start,
    Step,
    SwitchBoot,
    Target,
    Timeout,
    VerifySlot,
)
from device_agent.firmware.slots import _dump_state, _load_state
from protocols import cbor
from tests.device_agent.firmware.harness import DEV, NEW_DIGEST

TARGET = Target("job-1", 2, NEW_DIGEST, 100)
FRESH = InstallState(device_id=DEV)


def run(state, *events):
    for event in events:
        state = install.step(state, event, now=1).state
    return state


def test_start_targets_the_inactive_slot():
    transition = install.step(FRESH, Start(TARGET, "b"), now=5)
    assert transition.state.slot == "a" and transition.effects == (Download("a", 0),)
    assert transition.reports[0].key == f"{DEV}/job-1/0" and transition.reports[0].at == 5


def test_the_full_transition_sequence_and_its_effects():
    state = run(FRESH, Start(TARGET, "a"), ChunkWritten(60), ChunkWritten(40))
    steps = [
        (DownloadComplete(), Step.DOWNLOADED, (VerifySlot("b", NEW_DIGEST, 100),)),
        (ImageVerified(ok=True), Step.VERIFIED, ()),
        (Install(), Step.INSTALLING, (SwitchBoot("b"),)),
        (SlotSwitched(), Step.REBOOTING, (Reboot(),)),
        (BootAttemptWithoutConfirmation(), Step.REBOOTING, (Reboot(),)),
        (Booted(health_ok=True), Step.CONFIRMED, (Confirm("b"),)),
    ]
    for event, step, effects in steps:
        transition = install.step(state, event, now=1)
        state = transition.state
        assert (state.step, transition.effects) == (step, effects)
    assert [r.step.value for r in state.outbox] == [
        "downloading", "downloaded", "verified", "installing", "rebooting", "confirmed",
    ]  # fmt: skip
    assert state.confirmed_sequence == 2 and install.redo(state) == (Confirm("b"),)


@pytest.mark.parametrize(
    ("events", "reason"),
    [
        ((Booted(health_ok=False),), "health check failed"),
        ((Booted(health_ok=True, fell_back=True),), "the bootloader fell back to the old slot"),
        ((BootAttemptWithoutConfirmation(),) * 3, "no confirmation within 3 boot attempts"),
        ((Timeout(),), "timed out while rebooting"),
    ],
)
def test_after_the_switch_trouble_reverts(events, reason):
    switched = run(
        FRESH, Start(TARGET, "a"), ChunkWritten(100), DownloadComplete(),
        ImageVerified(ok=True), Install(), SlotSwitched(),
    )  # fmt: skip
    transition = install.step(run(switched, *events[:-1]), events[-1], now=1)
    assert transition.state.step is Step.REVERTED and transition.state.reason == reason
    assert transition.effects == (Revert("a"),) and transition.reports[0].reason == reason


def test_before_the_switch_trouble_fails_without_touching_the_boot_record():
    for events in [
        (ChunkWritten(101),),
        (ChunkWritten(99), DownloadComplete()),
        (ChunkWritten(100), DownloadComplete(), ImageVerified(ok=False)),
        (ChunkWritten(100), DownloadComplete(), ImageVerified(ok=True), Timeout()),
    ]:
        transition = install.step(run(FRESH, Start(TARGET, "a"), *events[:-1]), events[-1], now=1)
        assert transition.state.step is Step.FAILED and transition.effects == ()


@pytest.mark.parametrize(
    "event",
    [ChunkWritten(1), DownloadComplete(), ImageVerified(ok=True), Install(), SlotSwitched(),
     Booted(health_ok=True), BootAttemptWithoutConfirmation(), Timeout(), ReportSent("k")],
)  # fmt: skip
def test_events_out_of_order_are_refused_in_idle(event):
    with pytest.raises(InvalidEvent):
        install.step(FRESH, event, now=1)


@pytest.mark.parametrize(
    "target",
    [
        Target("", 2, NEW_DIGEST, 1),
        Target("j", 2, b"short", 1),
        Target("j", 2, NEW_DIGEST, 0),
        Target("j", 0, NEW_DIGEST, 1),
    ],
)
def test_bad_targets_are_refused(target):
    with pytest.raises(BadTarget):
        install.step(FRESH, Start(target, "a"), now=1)


# ------------------------------------------------------- hypothesis model

EVENTS = st.one_of(
    st.builds(ChunkWritten, st.integers(0, 120)),
    st.just(DownloadComplete()),
    st.builds(ImageVerified, st.booleans()),
    st.just(Install()),
    st.just(SlotSwitched()),
    st.builds(Booted, st.booleans(), st.booleans()),
    st.just(BootAttemptWithoutConfirmation()),
    st.just(Timeout()),
)


class InstallMachine(RuleBasedStateMachine):
    """Random event sequences against a model of the boot record."""

    def __init__(self) -> None:
        super().__init__()
        self.state = FRESH
        self.active = "a"  # the model bootloader's confirmed slot
        self.pending: str | None = None
        self.verified_job: str | None = None
        self.healthy_boot = False
        self.keys: dict[str, tuple[str, str]] = {}
        self.jobs = 0

    def apply(self, event) -> None:
        try:
            transition = install.step(self.state, event, now=self.jobs)
        except (InvalidEvent, BadTarget):
            return
        job = self.state.target.job_id if self.state.target else None
        if isinstance(event, ImageVerified) and event.ok and self.state.step is Step.DOWNLOADED:
            self.verified_job = job
        if isinstance(event, Booted) and not event.fell_back and event.health_ok:
            self.healthy_boot = True
        for effect in transition.effects:
            self.perform(effect, transition.state)
        for report in transition.reports:
            assert report.key not in self.keys
            self.keys[report.key] = (report.job_id, report.step.value)
        self.state = transition.state

    def perform(self, effect, new_state) -> None:
        if isinstance(effect, SwitchBoot):
            assert self.verified_job == new_state.target.job_id, "switch before verification"
            assert effect.slot != self.active, "switch to the active slot"
            self.pending = effect.slot
        elif isinstance(effect, Confirm):
            assert self.healthy_boot and self.pending == effect.slot
            self.active, self.pending = effect.slot, None
        elif isinstance(effect, Revert):
            assert effect.slot == self.active
            self.pending = None
        elif isinstance(effect, Download):
            assert effect.slot != self.active, "download into the active slot"

    @rule(size=st.integers(1, 200), seq_bump=st.integers(0, 2))
    def start(self, size, seq_bump):
        self.jobs += 1
        self.healthy_boot = False
        seq = self.state.confirmed_sequence + seq_bump
        self.apply(Start(Target(f"job-{self.jobs}", seq, NEW_DIGEST, size), self.active))

    @rule(event=EVENTS)
    def event(self, event):
        self.apply(event)

    @precondition(lambda self: self.state.step is Step.DOWNLOADING)
    @rule()
    def write_the_rest(self):
        self.apply(ChunkWritten(self.state.target.size - self.state.written))

    @precondition(lambda self: self.state.outbox)
    @rule(data=st.data())
    def ack(self, data):
        report = data.draw(st.sampled_from(self.state.outbox))
        self.apply(ReportSent(report.key))

    @invariant()
    def consistent(self):
        install.validate(self.state)
        assert _load_state(cbor.decode(cbor.encode(_dump_state(self.state)))) == self.state
        if self.pending is not None:
            assert self.state.step in install.SWITCHED
        if self.state.step is Step.CONFIRMED:
            assert self.active == self.state.slot and self.pending is None
        if self.state.step in (Step.REVERTED, Step.FAILED):
            assert self.pending is None and self.active == self.state.old_slot
        steps = [s for job, s in self.keys.values() if job == f"job-{self.jobs}"]
        assert len(steps) == len(set(steps)), "a step reported twice in one job"
        if self.state.step is Step.CONFIRMED:
            assert steps[-4:] == ["verified", "installing", "rebooting", "confirmed"]

    @invariant()
    def redo_is_consistent(self):
        effects = install.redo(self.state)
        assert all(isinstance(e, (Download, VerifySlot, SwitchBoot, install.CheckHealth,
                                  Confirm, Revert)) for e in effects)  # fmt: skip


InstallMachine.TestCase.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)
TestInstallMachine = InstallMachine.TestCase


def test_state_round_trips_through_cbor():
    state = dataclasses.replace(run(FRESH, Start(TARGET, "a")), written=7)
    assert _load_state(cbor.decode(cbor.encode(_dump_state(state)))) == state
