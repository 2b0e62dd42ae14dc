"""The fan-out benchmark's minimal MQTT client, against a real Mosquitto (nothing timed)."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench._fanout_devices import LiteMqtt, MqttError
from bench.manifest_fanout import HUB_USER, SIM_USER, BenchBroker, mosquitto_binary

pytestmark = pytest.mark.skipif(
    shutil.which(mosquitto_binary()) is None and not Path(mosquitto_binary()).exists(),
    reason="needs a mosquitto binary",
)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[BenchBroker]:
    running = BenchBroker(tmp_path, mosquitto_binary())
    running.start()
    yield running
    running.stop()


def _until(connection: LiteMqtt, want: int, got: list[tuple[str, bytes]]) -> None:
    deadline = time.monotonic() + 10
    while len(got) < want and time.monotonic() < deadline:
        got.extend(connection.feed())
        connection.flush()  # PUBACKs for QoS 1
        time.sleep(0.01)


def test_subscribe_receive_and_publish_at_qos_1(broker: BenchBroker) -> None:
    device = LiteMqtt("127.0.0.1", broker.port, "sim-t", SIM_USER, broker.sim_password)
    hub = LiteMqtt("127.0.0.1", broker.port, "hub-t", HUB_USER, broker.hub_password)
    down = [f"d/dev-{i}/down/manifest" for i in range(3)]
    device_sub, hub_sub = device.subscribe(down), hub.subscribe(["d/+/up/#"])
    device.flush()
    hub.flush()
    deadline = time.monotonic() + 10
    while not (device.subacks and hub.subacks) and time.monotonic() < deadline:
        device.feed()
        hub.feed()
        time.sleep(0.01)
    assert (device.subacks, hub.subacks) == ({device_sub}, {hub_sub})
    big = bytes(range(256)) * 80  # a 3-byte remaining length
    for topic, payload in zip(down, [b"one", b"", big], strict=True):
        hub.publish(topic, payload)
    hub.flush()
    received: list[tuple[str, bytes]] = []
    _until(device, 3, received)
    assert received == [(down[0], b"one"), (down[1], b""), (down[2], big)]
    device.publish("d/dev-0/up/manifest_ack", b"ack")
    device.flush()
    acks: list[tuple[str, bytes]] = []
    _until(hub, 1, acks)
    assert acks == [("d/dev-0/up/manifest_ack", b"ack")]
    deadline = time.monotonic() + 10
    while (device.pubacks < 1 or hub.pubacks < 3) and time.monotonic() < deadline:
        device.feed()
        hub.feed()
        time.sleep(0.01)
    assert (device.pubacks, hub.pubacks) == (1, 3)  # the broker acknowledged our QoS 1
    device.close()
    hub.close()


def test_a_refused_login_is_an_error(broker: BenchBroker) -> None:
    with pytest.raises(MqttError):
        LiteMqtt("127.0.0.1", broker.port, "sim-x", SIM_USER, "wrong password")


def test_packets_split_anywhere_are_reassembled() -> None:
    client = LiteMqtt.__new__(LiteMqtt)
    client._buffer = bytearray()
    body = b"\x00\x03a/b" + b"\x00\x07" + b"x" * 200
    stream = (b"\x32" + bytes([len(body) & 0x7F | 0x80, len(body) >> 7]) + body) * 3
    packets: list[tuple[int, bytes]] = []
    for byte in stream:
        client._buffer.append(byte)
        packets.extend(client._packets())
    assert packets == [(0x32, body)] * 3 and client._buffer == bytearray()
