"""The installer end to end on a firmware directory (no crashes)."""

import pytest

from device_agent.firmware.install import (
    BadTarget,
    InvalidEvent,
    Step,
    Target,
    VerifySlot,
)
from device_agent.firmware.slots import FirmwareDir, resume
from tests.device_agent.firmware.harness import (
    CHUNK,
    NEW,
    NEW_DIGEST,
    OLD_DIGEST,
    Sim,
    sha,
    target,
)

HAPPY = ["downloading", "downloaded", "verified", "installing", "rebooting", "confirmed"]


def installed(sim: Sim, tgt: Target | None = None):
    device = sim.power_on()
    device.start(tgt or target())
    return device, device.run()


@pytest.fixture
def sim(tmp_path):
    sim = Sim(tmp_path)
    sim.provision()
    return sim


def test_happy_path_confirms_the_new_image_in_the_inactive_slot(sim):
    device, state = installed(sim)
    assert state.step is Step.CONFIRMED and state.confirmed_sequence == 2
    record = FirmwareDir(sim.root).read_boot()
    assert (record.active, record.pending, record.confirmed) == ("b", None, True)
    assert device.running == "b"
    assert sim.slot_digest("a") == OLD_DIGEST and sim.slot_digest("b") == NEW_DIGEST
    assert sim.hub.steps() == HAPPY
    assert state.outbox == () and len(sim.hub.received) == 6
    assert sim.health_calls == [NEW_DIGEST] and sim.bad_boots == []


def test_reports_carry_minted_keys_and_the_time_of_the_transition(sim):
    installed(sim)
    keys = [r.key for r in sim.hub.received]
    assert keys == [f"dev-fw-0001/job-1/{i}" for i in range(6)]
    ats = [r.at for r in sim.hub.received]
    assert ats == sorted(ats) and all(r.reason is None for r in sim.hub.received)


def test_a_second_install_writes_the_other_slot_and_rollback_is_refused(sim):
    installed(sim)
    image3 = b"third image " * 40
    sim.payload = image3
    sim.verdicts[sha(image3)] = True
    device, state = installed(sim, target("job-2", 3, image3))
    assert state.step is Step.CONFIRMED and device.running == "a"
    assert sim.slot_digest("a") == sha(image3) and sim.slot_digest("b") == NEW_DIGEST
    with pytest.raises(BadTarget, match="rollback"):
        device.start(target("job-3", 2))
    keys = [r.key for r in sim.hub.received]
    assert len(set(keys)) == 12 and keys[6] == "dev-fw-0001/job-2/6"


def test_health_check_failure_reverts_to_the_old_slot(sim):
    sim.verdicts[NEW_DIGEST] = False
    device, state = installed(sim)
    assert state.step is Step.REVERTED and state.reason == "health check failed"
    assert device.running == "a" and FirmwareDir(sim.root).read_boot().active == "a"
    assert sim.hub.steps() == [*HAPPY[:-1], "reverted"]
    assert sim.hub.received[-1].reason == "health check failed"
    assert state.confirmed_sequence == 0


@pytest.mark.parametrize("limit", [1, 3, 5])
def test_no_confirmation_within_n_boots_reverts(sim, limit):
    sim.verdicts[NEW_DIGEST] = None
    sim.max_boot_attempts = limit
    device, state = installed(sim)
    assert state.step is Step.REVERTED
    assert state.reason == f"no confirmation within {limit} boot attempts"
    assert sim.health_calls == [NEW_DIGEST] * limit
    assert device.running == "a" and sim.hub.steps()[-1] == "reverted"


def test_the_same_job_can_be_retried_after_a_revert_with_fresh_keys(sim):
    sim.verdicts[NEW_DIGEST] = False
    device, _ = installed(sim)
    sim.verdicts[NEW_DIGEST] = True
    device.start(target())
    assert device.run().step is Step.CONFIRMED
    keys = [r.key for r in sim.hub.received]
    assert len(keys) == len(set(keys)) == 12


def test_download_interrupted_resumes_from_the_last_written_chunk(sim):
    sim.interrupt_after = 3
    device = sim.power_on()
    device.start(target())
    with pytest.raises(ConnectionError):
        device.run()
    assert device.state.step is Step.DOWNLOADING and device.state.written == 3 * CHUNK
    assert device.run().step is Step.CONFIRMED
    assert sim.fetch_offsets == [0, 3 * CHUNK]


def test_download_interrupted_resumes_after_a_restart(sim):
    sim.interrupt_after = 5
    device = sim.power_on()
    device.start(target())
    with pytest.raises(ConnectionError):
        device.run()
    del device
    assert resume(sim.root)[0].offset == 5 * CHUNK  # type: ignore[union-attr]
    assert sim.power_on().run().step is Step.CONFIRMED
    assert sim.fetch_offsets == [0, 5 * CHUNK] and sim.slot_digest("b") == NEW_DIGEST


def test_a_bad_image_is_never_activated(sim):
    sim.payload = bytes([NEW[0] ^ 1]) + NEW[1:]
    device, state = installed(sim)
    assert state.step is Step.FAILED and state.reason == "digest mismatch"
    record = FirmwareDir(sim.root).read_boot()
    assert (record.active, record.pending) == ("a", None) and device.running == "a"
    assert sim.hub.steps() == ["downloading", "downloaded", "failed"]
    assert sim.health_calls == []


@pytest.mark.parametrize(
    ("payload", "reason"),
    [(NEW + b"x", "payload larger than declared"), (NEW[:-1], "size mismatch: 526 of 527 bytes")],
)
def test_a_payload_of_the_wrong_size_fails(sim, payload, reason):
    sim.payload = payload
    _, state = installed(sim)
    assert state.step is Step.FAILED and state.reason == reason
    assert FirmwareDir(sim.root).read_boot().pending is None


def test_an_image_changed_after_verification_is_not_switched_to(sim):
    device = sim.power_on()
    device.auto_install = False
    device.start(target())
    assert device.run().step is Step.VERIFIED
    path = FirmwareDir(sim.root).slot_path("b")
    data = path.read_bytes()
    path.write_bytes(bytes([data[0] ^ 0x80]) + data[1:])
    device.auto_install = True
    state = device.run()
    assert state.step is Step.FAILED and state.reason == "the image changed after verification"
    assert FirmwareDir(sim.root).read_boot().pending is None and device.running == "a"


def test_reports_queue_while_the_hub_is_offline_and_keep_their_keys(sim):
    sim.hub.online = False
    _, state = installed(sim)
    assert state.step is Step.CONFIRMED and [r.step.value for r in state.outbox] == HAPPY
    keys = [r.key for r in state.outbox]
    sim.hub.online = True
    reopened = sim.power_on()
    assert reopened.run().outbox == ()
    assert [r.key for r in sim.hub.received] == keys


def test_timeout_while_downloading_fails_and_a_new_job_may_start(sim):
    sim.interrupt_after = 2
    device = sim.power_on()
    device.start(target())
    with pytest.raises(ConnectionError):
        device.run()
    device.timeout()
    assert device.run().step is Step.FAILED
    assert device.state.reason == "timed out while downloading"
    device.start(target("job-2"))
    assert device.run().step is Step.CONFIRMED


def test_start_is_refused_while_an_install_is_in_flight(sim):
    device = sim.power_on()
    device.start(target())
    with pytest.raises(InvalidEvent):
        device.start(target("job-2"))


def test_resume_lists_the_effects_to_redo(sim, tmp_path):
    assert resume(tmp_path / "nothing") == ()
    device = sim.power_on()
    device.auto_install = False
    device.start(target())
    device.run()
    assert resume(sim.root) == ()  # verified, waiting for the go-ahead
    assert device.state.step is Step.VERIFIED
    assert VerifySlot("b", NEW_DIGEST, len(NEW)) not in resume(sim.root)
