"""Crash injection: power loss at every persistence point and at random ones.

Crash points are the calls of the installer's crash hook: before and after
every atomic write of ``install.cbor`` and ``boot.cbor`` (including the
bootloader's own writes at power-on), half way through every chunk written
into the slot (a torn write) and after its fsync, and between a report's
delivery and the persisted acknowledgement. A crash raises from the hook;
every in-memory object is then dropped and the device powers on again from
the directory alone.
"""

import random

import pytest

from device_agent.firmware.install import SETTLED, SWITCHED, Step
from device_agent.firmware.slots import FirmwareDir, Installer
from tests.device_agent.firmware.harness import (
    NEW,
    NEW_DIGEST,
    OLD_DIGEST,
    Crash,
    CrashAt,
    Sim,
    target,
)

JOB = "job-1"
BAD = bytes([NEW[0] ^ 1]) + NEW[1:]
# scenario: (payload, health verdict of the new image, possible final steps)
SCENARIOS = {
    "healthy": (NEW, True, {Step.CONFIRMED}),
    "unhealthy": (NEW, False, {Step.REVERTED}),
    "silent": (NEW, None, {Step.REVERTED}),
    "bad-digest": (BAD, True, {Step.FAILED}),
}
ALL_OUTCOMES = {Step.CONFIRMED, Step.REVERTED, Step.FAILED}


def make_sim(tmp_path, scenario: str, crash: CrashAt) -> Sim:
    payload, verdict, _ = SCENARIOS[scenario]
    sim = Sim(tmp_path, payload=payload, verdicts={NEW_DIGEST: verdict}, crash=crash)
    sim.provision()
    return sim


def check_after_power_on(sim: Sim, device: Installer) -> None:
    """The invariants that must hold whenever the device has just booted."""
    allowed = {OLD_DIGEST} | ({NEW_DIGEST} if sim.payload == NEW else set())
    record = FirmwareDir(sim.root).read_boot()
    state = device.state
    assert sim.slot_digest(device.running) in allowed
    assert sim.slot_digest(record.active) in allowed
    if record.pending is not None:
        assert sim.slot_digest(record.pending) == NEW_DIGEST
        assert state.step in SWITCHED
    if device.running != "a" or record.active != "a":
        # the new slot is booted or active only once it was verified
        assert state.step in SWITCHED and sim.payload == NEW
    assert sim.bad_boots == []


def drive(sim: Sim) -> Step:
    """Power on, check, (re)issue the job if it was not persisted, run."""
    device = sim.power_on()
    check_after_power_on(sim, device)
    if device.state.target is None:
        device.start(target(JOB))
    return device.run().step


def install_with_crashes(sim: Sim, max_restarts: int = 500) -> tuple[Step, int]:
    for restarts in range(max_restarts):
        try:
            return drive(sim), restarts
        except Crash:
            continue
    raise AssertionError("the install never settled")


def check_outcome(sim: Sim, final: Step) -> None:
    clean = Sim(sim.root, payload=sim.payload, verdicts=dict(sim.verdicts), hub=sim.hub)
    device = clean.power_on()  # one more clean restart: nothing left to do
    check_after_power_on(clean, device)
    assert device.run().step is final and device.state.outbox == ()
    record = FirmwareDir(sim.root).read_boot()
    assert record.pending is None and device.running == record.active
    expected = {Step.CONFIRMED: "b"}.get(final, "a")
    assert record.active == expected
    steps = sim.hub.steps(JOB)  # also asserts one key never names two reports
    assert len(steps) == len(set(steps)), "a step reported under two keys"
    assert steps[0] == "downloading" and steps[-1] == final.value
    if final is Step.CONFIRMED:
        assert steps == ["downloading", "downloaded", "verified", "installing", "rebooting",
                         "confirmed"]  # fmt: skip


def crash_points(tmp_path, scenario: str) -> list[str]:
    counter = CrashAt()
    sim = make_sim(tmp_path / "count", scenario, counter)
    final, _ = install_with_crashes(sim)
    assert final in SCENARIOS[scenario][2]
    return counter.points


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_crash_at_every_persistence_point(tmp_path, scenario):
    points = crash_points(tmp_path, scenario)
    kinds = set(points)
    assert {"install.cbor:before", "install.cbor:after", "slot:torn", "report:sent"} <= kinds
    if scenario != "bad-digest":
        assert {"boot.cbor:before", "boot.cbor:after"} <= kinds
    for index, point in enumerate(points):
        sim = make_sim(tmp_path / f"crash-{index}", scenario, CrashAt({index}))
        final, restarts = install_with_crashes(sim)
        assert restarts == 1, f"crash #{index} at {point} did not happen exactly once"
        assert final in SCENARIOS[scenario][2], f"crash #{index} at {point}: ended {final}"
        check_outcome(sim, final)


@pytest.mark.parametrize("seed", range(200))
def test_crash_at_random_points(tmp_path, seed):
    rng = random.Random(seed)
    scenario = rng.choice(sorted(SCENARIOS))
    crashes = set(rng.sample(range(100), rng.randint(1, 12)))
    sim = make_sim(tmp_path, scenario, CrashAt(crashes))
    final, restarts = install_with_crashes(sim)
    assert restarts >= (1 if min(crashes) < 50 else 0)
    # several crashes during trial boots may exhaust the bootloader's attempts
    possible = SCENARIOS[scenario][2] | ({Step.REVERTED} if scenario == "healthy" else set())
    assert final in possible
    check_outcome(sim, final)


def test_a_torn_slot_write_is_cut_back_and_rewritten(tmp_path):
    counter = CrashAt()
    crash_points_sim = make_sim(tmp_path / "count", "healthy", counter)
    install_with_crashes(crash_points_sim)
    torn = [i for i, p in enumerate(counter.points) if p == "slot:torn"]
    sim = make_sim(tmp_path / "torn", "healthy", CrashAt({torn[3]}))
    with pytest.raises(Crash):
        drive(sim)
    device = sim.power_on()
    written = device.state.written
    assert device.fw.slot_path("b").stat().st_size > written  # the torn tail is there
    assert device.run().step is Step.CONFIRMED
    assert sim.fetch_offsets == [0, written]


def test_a_crash_loop_during_trial_boots_falls_back_to_the_old_image(tmp_path):
    sim = make_sim(tmp_path, "silent", CrashAt())
    sim.verdicts[NEW_DIGEST] = True
    calls = 0

    def crash_at_health(slot):
        nonlocal calls
        calls += 1
        raise Crash("the new image crashes before its health check")

    sim.health = crash_at_health  # type: ignore[method-assign]
    final, restarts = install_with_crashes(sim)
    assert final is Step.REVERTED and calls == 3 and restarts == 3
    device = sim.power_on()
    assert device.state.reason == "the bootloader fell back to the old slot"
    assert device.running == "a" and device.state.step in SETTLED
