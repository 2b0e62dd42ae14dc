"""Power loss with the FirmwareComponent wired in: at every persistence point, and at random.

Crash points are the calls of the crash hook, which the component hands to
the installer (``install.cbor`` and ``boot.cbor`` before and after every
atomic write, the bootloader's own writes, half way through every slot write
and after its fsync) and to its records (``offer.cbor``, ``suit.cbor``). A
crash raises from the hook; the component and every in-flight message are
dropped, and the device powers on again from its directory alone, reconnects
and asks the fake hub for its job.

After every power-on the active slot and the booted slot must hold an image
whose digest a signed manifest names (the factory image's or the offered
one's), and once settled the outcome must be the scenario's.
"""

from __future__ import annotations

import dataclasses
import random

import pytest

from device_agent.firmware.install import SETTLED, SWITCHED, Step
from protocols import suit
from protocols.firmware_messages import FirmwareChunk
from protocols.messages import Message
from tests.device_agent.firmware.fakes import (
    FACTORY,
    NEW,
    Device,
    FakeHub,
    envelope,
    make_job,
    public_key,
    settings,
    sha,
)
from tests.device_agent.firmware.harness import Crash, CrashAt

JOB = make_job(1)
SIGNED = {
    suit.inspect_envelope(env, [public_key()]).image_digest
    for env in (envelope(FACTORY, 1), JOB.envelope)
}


def flip_chunk_2_once() -> object:
    done: list[int] = []

    def tamper(message: Message) -> list[Message]:
        if isinstance(message, FirmwareChunk) and message.index == 2 and not done:
            done.append(1)
            data = bytes([message.data[0] ^ 0x10]) + message.data[1:]
            return [dataclasses.replace(message, data=data)]
        return [message]

    return tamper


def cut_after_4() -> object:
    sent: list[int] = []

    def tamper(message: Message) -> list[Message]:
        if isinstance(message, FirmwareChunk):
            sent.append(message.index)
            if len(sent) in (5, 6):  # two chunks lost on the way
                return []
        return [message]

    return tamper


# scenario: (health verdict, tamper factory, final step)
SCENARIOS = {
    "healthy": ("pass", None, Step.CONFIRMED),
    "unhealthy": ("fail", None, Step.REVERTED),
    "silent": ("silent", None, Step.REVERTED),
    "bit flip": ("pass", flip_chunk_2_once, Step.CONFIRMED),
    "lost chunks": ("pass", cut_after_4, Step.CONFIRMED),
}


def make_device(root, scenario: str, crash: CrashAt) -> Device:
    verdict, tamper, _ = SCENARIOS[scenario]
    hub = FakeHub(jobs=[JOB], tamper=tamper() if tamper else None)  # type: ignore[arg-type]
    device = Device(
        root, hub, settings=settings(health_check=verdict, request_size=2, in_flight=4), crash=crash
    )
    device.provision()
    return device


def check_after_power_on(device: Device) -> None:
    component = device.component
    assert component is not None
    record = device.fw.read_boot()
    assert device.slot_digest(record.active) in SIGNED
    assert device.slot_digest(component.running_slot) in SIGNED
    if record.pending is not None:
        assert device.slot_digest(record.pending) == sha(NEW)
        assert component.step in SWITCHED


def settled(device: Device) -> bool:
    component = device.component
    return (
        component is not None
        and component.step in SETTLED
        and component.installer.state.outbox == ()
        and device.hub.finished(JOB.job_id)
    )


def install_with_crashes(device: Device, max_restarts: int = 100) -> int:
    """Run until settled; returns the number of restarts."""
    for restarts in range(max_restarts):
        try:
            if device.component is None:
                device.power_on()
                check_after_power_on(device)
            device.connect()
            for _ in range(20):
                if settled(device):
                    return restarts
                device.tick(device.settings.chunk_timeout_seconds)
            raise AssertionError("the install does not settle")
        except Crash:
            device.component = None
    raise AssertionError("too many restarts")


def check_outcome(device: Device, final: Step) -> None:
    clean = Device(device.root, device.hub, settings=device.settings)  # one more clean power-on
    component = clean.power_on()
    check_after_power_on(clean)
    assert component.step is final and component.installer.state.outbox == ()
    record = clean.fw.read_boot()
    assert record.pending is None and component.running_slot == record.active
    expected = (NEW, "b", 2) if final is Step.CONFIRMED else (FACTORY, "a", 1)
    assert (component.running_image(), record.active, component.installed_seq) == expected
    steps = device.hub.steps(JOB.job_id)  # also: one key never names two reports
    assert len(steps) == len(set(steps)), f"a step reported under two keys: {steps}"
    assert steps[0] == "downloading" and steps[-1] == final.value


def crash_points(root, scenario: str) -> list[str]:
    counter = CrashAt()
    device = make_device(root, scenario, counter)
    assert install_with_crashes(device) == 0
    check_outcome(device, SCENARIOS[scenario][2])
    return counter.points


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_crash_at_every_persistence_point(tmp_path, scenario):
    points = crash_points(tmp_path / "count", scenario)
    kinds = set(points)
    assert {"offer.cbor:before", "install.cbor:after", "slot:torn", "boot.cbor:before"} <= kinds
    if SCENARIOS[scenario][2] is Step.CONFIRMED:
        assert "suit.cbor:after" in kinds
    for index, point in enumerate(points):
        device = make_device(tmp_path / f"crash-{index}", scenario, CrashAt({index}))
        restarts = install_with_crashes(device)
        assert restarts == 1, f"crash #{index} at {point} did not happen exactly once"
        check_outcome(device, SCENARIOS[scenario][2])


@pytest.mark.parametrize("seed", range(60))
def test_crash_at_random_points(tmp_path, seed):
    rng = random.Random(seed)
    scenario = rng.choice(sorted(SCENARIOS))
    crashes = set(rng.sample(range(90), rng.randint(1, 10)))
    device = make_device(tmp_path, scenario, CrashAt(crashes))
    install_with_crashes(device)
    final = SCENARIOS[scenario][2]
    # crashes during the trial boots may use up the bootloader's attempts
    possible = {final} | ({Step.REVERTED} if final is Step.CONFIRMED else set())
    clean = Device(device.root, device.hub, settings=device.settings)
    component = clean.power_on()
    assert component.step in possible
    check_outcome(device, component.step)
