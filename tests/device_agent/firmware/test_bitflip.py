"""One random bit flipped in one random chunk, 500 times: no bad image is ever activated.

One device installs 500 releases in a row (each a new sequence number, a new
random image of 1..9 chunks, the last usually short). In every trial the hub
side flips one random bit of one random chunk once on its way down. The
device must refuse exactly that chunk on arrival, ask for it again, and end
up running exactly the signed image; every image it ever health-checks (that
is, booted) must match a digest a verified manifest names.
"""

from __future__ import annotations

import dataclasses
import os
import random

from device_agent.firmware.component import HealthProbe
from device_agent.firmware.install import Step
from protocols.firmware_messages import FirmwareChunk
from protocols.messages import Message
from tests.device_agent.firmware.fakes import CHUNK, Device, FakeHub, make_job, sha

TRIALS = 500


def test_500_single_bit_flips_never_activate_a_bad_image(tmp_path, monkeypatch):
    # Durability is the crash tests' subject; here fsync only costs time (500 installs).
    monkeypatch.setattr(os, "fsync", lambda fd: None)
    rng = random.Random(500)
    hub = FakeHub()
    booted: list[tuple[bytes, bytes]] = []
    device = Device(tmp_path, hub)

    def health(probe: HealthProbe) -> bool:
        image = device.fw.slot_path(probe.slot).read_bytes()
        booted.append((sha(image), probe.digest))
        return True

    device.health = health
    device.provision()
    component = device.power_on()
    flips = 0
    for trial in range(TRIALS):
        image = rng.randbytes(rng.randint(1, 9 * CHUNK))
        job = make_job(trial + 1, image=image, sequence=trial + 2)
        hub.jobs = [job]
        chunks = -(-len(image) // CHUNK)
        target, bit = rng.randrange(chunks), None

        def tamper(message: Message, target: int = target) -> list[Message]:
            nonlocal bit, flips
            if isinstance(message, FirmwareChunk) and message.index == target and bit is None:
                bit = rng.randrange(len(message.data) * 8)
                data = bytearray(message.data)
                data[bit // 8] ^= 1 << (bit % 8)
                flips += 1
                return [dataclasses.replace(message, data=bytes(data))]
            return [message]

        hub.tamper = tamper
        before = component.refused_chunks["chunk_corrupt"]
        device.offer(job)
        assert bit is not None, f"trial {trial}: the chunk was never sent"
        assert component.refused_chunks["chunk_corrupt"] == before + 1, f"trial {trial}"
        assert component.step is Step.CONFIRMED, f"trial {trial}: {component.step}"
        assert component.running_image() == image and component.installed_seq == trial + 2
        assert hub.steps(job.job_id)[-1] == "confirmed"
    assert flips == TRIALS and len(booted) == TRIALS
    assert all(actual == signed for actual, signed in booted), "a bad image was booted"
    assert sum(component.refused_chunks.values()) == TRIALS
