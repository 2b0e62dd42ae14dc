"""Session components: they speak after the hello, get unclaimed messages, and tick."""

from __future__ import annotations

from dataclasses import dataclass, field

from device_agent.identity import Identity
from device_agent.outgoing import Outgoing
from device_agent.session import DeviceSession
from protocols import topics
from protocols.messages import ErrorReply, ManifestAck, Message, SeatReply, State, encode_message

DEV = "dev-00000000000000000001"


@dataclass
class Recorder:
    wants: type[Message]
    seen: list[Message] = field(default_factory=list)
    ticks: list[int] = field(default_factory=list)

    def on_connected(self, *, now: int) -> list[Outgoing]:
        return [Outgoing(f"d/{DEV}/up/usage", f"resume@{now}".encode())]

    def on_message(self, message: Message, *, now: int) -> list[Outgoing] | None:
        if not isinstance(message, self.wants):
            return None
        self.seen.append(message)
        return [Outgoing(f"d/{DEV}/up/usage", b"handled")]

    def tick(self, *, now: int) -> list[Outgoing]:
        self.ticks.append(now)
        return []


def _session(*components: Recorder) -> DeviceSession:
    identity = Identity(device_id=DEV, mqtt_username=DEV, mqtt_password="x", anchors=())
    return DeviceSession(identity, agent_version="1", boot_epoch=1, components=components)


def test_components_speak_after_the_hello_on_connect() -> None:
    session = _session(Recorder(State))
    out = session.on_connected(now=42)
    assert [o.topic for o in out][:2] == [
        topics.device_up(DEV, topics.UpKind.STATUS),
        topics.device_up(DEV, topics.UpKind.HELLO),
    ]
    assert out[-1].payload == b"resume@42"


def test_messages_the_core_does_not_own_go_to_the_first_component_that_takes_them() -> None:
    # The core has no branch for a ManifestAck coming *down*: it stands in for a
    # component-owned message type.
    skipper, taker = Recorder(ErrorReply), Recorder(ManifestAck)
    session = _session(skipper, taker)
    ack = ManifestAck(seq=1, status="accepted")
    out = session.on_message(f"d/{DEV}/down/usage_ack", encode_message(ack), now=5)
    assert taker.seen == [ack]
    assert skipper.seen == []
    assert out == [Outgoing(f"d/{DEV}/up/usage", b"handled")]
    # Core messages never reach components.
    session.on_message(
        f"d/{DEV}/down/seat",
        encode_message(SeatReply(op="checkout", product="p", granted=True, reason="ok")),
        now=5,
    )
    assert taker.seen == [ack]


def test_unowned_messages_are_dropped_and_ticks_reach_every_component() -> None:
    first, second = Recorder(ErrorReply), Recorder(ErrorReply)
    session = _session(first, second)

    ack = encode_message(ManifestAck(seq=1, status="accepted"))
    assert session.on_message(f"d/{DEV}/down/usage_ack", ack, now=1) == []
    session.tick(now=9)
    assert first.ticks == [9] and second.ticks == [9]


def test_error_replies_reach_the_component_owning_the_refused_topic() -> None:
    owner = Recorder(ErrorReply)
    session = _session(owner)
    refusal = ErrorReply(code="decode_error", message="bad", ref=f"d/{DEV}/up/usage")
    out = session.on_message(f"d/{DEV}/down/error", encode_message(refusal), now=3)
    assert session.last_error == refusal  # the core still records it
    assert owner.seen == [refusal]
    assert out == [Outgoing(f"d/{DEV}/up/usage", b"handled")]
