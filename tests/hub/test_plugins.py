"""The plugin seam: batch handlers get their kind's messages, in order, from claimed senders."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

import pytest
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from hub.inbound import InboundRouter
from hub.mqtt.outbound import Inbound, Outbound
from hub.plugins import HubPlugin, inbound_handlers, load_plugins
from hub.registry.models import Device
from protocols import topics
from protocols.messages import Hello, Message, State, Status, decode_message, encode_message
from tests.hub.conftest import Clock
from tests.hub.fleet import MANIFEST_POLICY, POLICY, Fleet


@pytest.fixture
def fleet(session_factory: sessionmaker[Session], clock: Clock) -> Fleet:
    return Fleet.create(session_factory, clock.now)


@dataclass
class RecordingHandler:
    kind: str
    calls: list[list[tuple[str, Message]]] = field(default_factory=list)
    online_seen: list[bool] = field(default_factory=list)

    def handle(
        self, session: Session, items: Sequence[tuple[str, Message]], now: datetime
    ) -> list[Outbound]:
        self.calls.append(list(items))
        # Earlier messages of the batch are already applied when a handler runs.
        self.online_seen.append(session.get_one(Device, items[0][0]).online)
        return [Outbound(topics.device_down(items[0][0], topics.DownKind.USAGE_ACK), b"ok")]


def make_router(
    factory: sessionmaker[Session], clock: Clock, handler: RecordingHandler
) -> InboundRouter:
    return InboundRouter(
        session_factory=factory,
        claim_policy=POLICY,
        manifest_policy=MANIFEST_POLICY,
        clock=clock,
        max_payload_bytes=1024,
        handlers=[handler],
    )


def usage(device_id: str, boot: int) -> Inbound:
    payload = encode_message(Hello(agent_version="x", manifest_seq=0, boot_epoch=boot))
    return Inbound(topics.device_up(device_id, topics.UpKind.USAGE), payload)


def test_handler_gets_its_kind_in_order_from_claimed_senders_only(
    fleet: Fleet, session_factory: sessionmaker[Session], clock: Clock
) -> None:
    device_id, _ = fleet.claimed_device("PL-1")
    unclaimed = fleet.device("PL-2")
    handler = RecordingHandler(kind=topics.UpKind.USAGE.value)
    status = Inbound(
        topics.device_up(device_id, topics.UpKind.STATUS), encode_message(Status(online=True))
    )
    result = make_router(session_factory, clock, handler).handle_batch(
        [usage(device_id, 1), usage(unclaimed, 9), status, usage(device_id, 2)]
    )
    boots = [[m.boot_epoch for _, m in call if isinstance(m, Hello)] for call in handler.calls]
    # Flushed before the status message, then at the end: arrival order kept.
    assert boots == [[1], [2]]
    assert handler.online_seen == [False, True]
    assert [o.payload for o in result.outbound] == [b"ok", b"ok"]


def test_other_kinds_still_reach_the_core(
    fleet: Fleet, session_factory: sessionmaker[Session], clock: Clock
) -> None:
    device_id, _ = fleet.claimed_device("PL-3")
    handler = RecordingHandler(kind=topics.UpKind.USAGE.value)
    hello = encode_message(Hello(agent_version="x", manifest_seq=0, boot_epoch=1))
    result = make_router(session_factory, clock, handler).handle_batch(
        [Inbound(topics.device_up(device_id, topics.UpKind.HELLO), hello)]
    )
    assert handler.calls == []
    assert any(isinstance(decode_message(o.payload), State) for o in result.outbound)


def test_two_handlers_for_one_kind_are_refused() -> None:
    kind = topics.UpKind.USAGE.value
    plugins = [
        HubPlugin(name=f"p{i}", inbound=lambda _ctx: [RecordingHandler(kind=kind)])
        for i in range(2)
    ]
    with pytest.raises(ValueError, match="two inbound handlers"):
        inbound_handlers(plugins, context=None)  # type: ignore[arg-type]


def test_plugin_modules_must_declare_a_hub_plugin() -> None:
    with pytest.raises(TypeError, match="not a HubPlugin"):
        load_plugins(["tests.hub.test_plugins"])


PLUGIN = "not a plugin: load_plugins must refuse this module"


@dataclass
class BrokenHandler:
    kind: str
    error: Exception

    def handle(
        self, session: Session, items: Sequence[tuple[str, Message]], now: datetime
    ) -> list[Outbound]:
        device = session.get_one(Device, items[0][0])
        device.online = True  # a write the failure must roll back
        session.flush()
        raise self.error


def test_a_failing_handler_cannot_poison_the_batch(
    fleet: Fleet, session_factory: sessionmaker[Session], clock: Clock
) -> None:
    device_id, _ = fleet.claimed_device("PL-4")
    other, _ = fleet.claimed_device("PL-5")
    handler = BrokenHandler(kind=topics.UpKind.USAGE.value, error=OverflowError("too big"))
    hello = encode_message(Hello(agent_version="x", manifest_seq=0, boot_epoch=1))
    result = make_router(session_factory, clock, handler).handle_batch(  # type: ignore[arg-type]
        [usage(device_id, 1), Inbound(topics.device_up(other, topics.UpKind.HELLO), hello)]
    )
    replies = [(o.topic, decode_message(o.payload)) for o in result.outbound]
    errors = [m for t, m in replies if t == topics.device_down(device_id, topics.DownKind.ERROR)]
    assert [(e.code, e.ref) for e in errors] == [  # type: ignore[attr-defined]
        ("internal_error", topics.device_up(device_id, topics.UpKind.USAGE))
    ]
    with session_factory() as s:
        assert s.get_one(Device, device_id).online is False  # the handler's write rolled back
        assert s.get_one(Device, other).online is True  # the rest of the batch committed


def test_a_database_outage_in_a_handler_still_fails_the_batch(
    fleet: Fleet, session_factory: sessionmaker[Session], clock: Clock
) -> None:
    device_id, _ = fleet.claimed_device("PL-6")
    outage = OperationalError("INSERT", {}, Exception("database is locked"))
    handler = BrokenHandler(kind=topics.UpKind.USAGE.value, error=outage)
    with pytest.raises(OperationalError):
        make_router(session_factory, clock, handler).handle_batch(  # type: ignore[arg-type]
            [usage(device_id, 1)]
        )
