"""What a malicious device tries, through its own authenticated MQTT session.

Each attack uses the device's real credentials and connection, so it tests
what the brokers and the hub let through, not what a well-behaved agent
would send. Payloads aimed at other devices' topics are *planted* with the
recorder: if any other device ever receives one, that is an isolation breach;
usage reported under another device's topic uses boot epoch
:data:`FORGED_EPOCH`, so a forged record the hub bills shows up as unexpected.

- ``replay_manifest``: replays the first manifest it ever received, (a) to
  itself as a man in the middle would (the trust core must refuse the
  rollback), (b) onto its own and a victim's ``down`` topic, and (c) sends the
  hub a stale ``accepted`` ack;
- ``foreign_usage``: publishes usage batches on a victim's ``up/usage`` topic;
- ``probe_topics``: subscribes to ``#``, ``d/+/up/#``, the victim's ``down``
  subtree and ``claim/+/req``, and publishes on the victim's ``up/status``
  and on a claim reply topic;
- ``oversize``: publishes a payload above the hub's cap (the broker drops it or
  closes the connection; the agent reconnects);
- ``malformed``: bad CBOR, a wrong structure, an unknown type and an unknown
  protocol version on its own ``up`` topics (the hub answers ``error``).
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

from device_agent.errors import TransportError
from device_agent.outgoing import Outgoing
from protocols import cbor, topics
from protocols.messages import ManifestAck, encode_message

if TYPE_CHECKING:
    from simulator.device import SimDevice

log = logging.getLogger(__name__)

FORGED_EPOCH = 999_999
OVERSIZE_BYTES = 200 * 1024


def _forged_usage(now: int) -> bytes:
    records = [[FORGED_EPOCH, i, "api_calls", 1000, now] for i in range(1, 4)]
    return bytes(cbor.encode({0: 1, 1: "usage_batch", 2: records}))


ORDER = ("replay_manifest", "foreign_usage", "probe_topics", "malformed", "oversize")
"""Attacks in the order they run: ``oversize`` may cost the connection, so it goes last."""


def planned(names: tuple[str, ...]) -> list[str]:
    """The attacks a device will run, in :data:`ORDER`."""
    return [name for name in ORDER if name in names]


async def attack(device: SimDevice, victim_id: str | None) -> None:
    """Run the device's pending attacks in order; one cut short is tried again later.

    Only attacks carried out to the end are counted (``record.attacks``).
    """
    done = device.record.attacks
    while device.pending_attacks and device.online:
        name = device.pending_attacks[0]
        try:
            await _ATTACKS[name](device, victim_id)
        except TransportError as exc:
            log.info("%s: %s cut short: %s", device.spec.serial, name, exc)
            done[f"{name}_cut_short"] = done.get(f"{name}_cut_short", 0) + 1
            return
        device.pending_attacks.pop(0)
        done[name] = done.get(name, 0) + 1


async def _publish(device: SimDevice, topic: str, payload: bytes, *, plant: bool) -> None:
    if plant:
        device.recorder.plant(device.spec.serial, payload)
    transport = device.transport
    if transport is None:
        raise TransportError("offline")
    await transport.publish(Outgoing(topic, payload))


async def _replay_manifest(device: SimDevice, victim: str | None) -> None:
    old = device.first_manifest
    session = device.session
    if old is None or session is None:
        return
    held = session.manifest_seq
    # (a) a replay straight into the device: the trust core must refuse a rollback.
    await device.send(
        session.on_message(
            topics.device_down(device.device_id, topics.DownKind.MANIFEST), old, now=device.now()
        )
    )
    if session.manifest_seq < held:
        device.record.errors["manifest_regressed"] = 1
    # (b) onto down topics, which only the hub may write.
    await _publish(
        device, topics.device_down(device.device_id, topics.DownKind.MANIFEST), old, plant=True
    )
    if victim:
        await _publish(
            device, topics.device_down(victim, topics.DownKind.MANIFEST), old, plant=True
        )
    # (c) tell the hub a stale sequence was accepted.
    stale = ManifestAck(seq=max(1, held - 1), status="accepted", reason=None)
    up = topics.device_up(device.device_id, topics.UpKind.MANIFEST_ACK)
    await _publish(device, up, encode_message(stale), plant=False)


async def _foreign_usage(device: SimDevice, victim: str | None) -> None:
    if victim:
        topic = topics.device_up(victim, topics.UpKind.USAGE)
        await _publish(device, topic, _forged_usage(device.now()), plant=True)


async def _probe_topics(device: SimDevice, victim: str | None) -> None:
    transport = device.transport
    if transport is None:
        raise TransportError("offline")
    filters = ["#", "d/+/up/#", "claim/+/req", "$SYS/#"]
    if victim:
        filters.append(topics.device_down_filter(victim))
    for topic_filter in filters:
        granted = await transport.subscribe(topic_filter)
        key = "probe_granted" if granted else "probe_refused"
        device.record.attacks[key] = device.record.attacks.get(key, 0) + 1
    if victim:
        offline = bytes(cbor.encode({0: 1, 1: "status", 2: False}))
        await _publish(device, topics.device_up(victim, topics.UpKind.STATUS), offline, plant=True)
    fake = bytes(cbor.encode({0: 1, 1: "error", 2: "x", 3: "forged"}))
    await _publish(device, topics.claim_response("claim-victim0000"), fake, plant=True)


async def _oversize(device: SimDevice, _victim: str | None) -> None:
    if device.transport is None:
        raise TransportError("offline")
    topic = topics.device_up(device.device_id, topics.UpKind.HELLO)
    try:
        await _publish(device, topic, os.urandom(OVERSIZE_BYTES), plant=True)
    except TransportError:
        # The broker closed the connection over the packet's size: the expected answer.
        attacks = device.record.attacks
        attacks["oversize_disconnected"] = attacks.get("oversize_disconnected", 0) + 1


async def _malformed(device: SimDevice, _victim: str | None) -> None:
    own = device.device_id
    samples = [
        (topics.UpKind.HELLO, b"\xff\x00garbage"),
        (topics.UpKind.MANIFEST_ACK, bytes(cbor.encode([1, 2, 3]))),
        (topics.UpKind.STATUS, bytes(cbor.encode({0: 1, 1: "no_such_type"}))),
        (topics.UpKind.HELLO, bytes(cbor.encode({0: 99, 1: "hello"}))),
        (topics.UpKind.USAGE, bytes(cbor.encode({0: 1, 1: "usage_batch", 2: "nope"}))),
    ]
    for kind, payload in samples:
        await _publish(device, topics.device_up(own, kind), payload, plant=True)


_ATTACKS = {
    "replay_manifest": _replay_manifest,
    "foreign_usage": _foreign_usage,
    "probe_topics": _probe_topics,
    "oversize": _oversize,
    "malformed": _malformed,
}
