"""Usage through the hub's inbound router: real bytes, the plugin's own handler."""

from __future__ import annotations

from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from hub.inbound import InboundRouter
from hub.mqtt.outbound import Inbound
from hub.plugins import BatchHandler, load_plugins
from hub.settings import Settings
from hub.telemetry.ingest import UsageHandler
from protocols import cbor, topics
from protocols.messages import ErrorReply, decode_message, encode_message
from protocols.usage_messages import UsageAck, UsageBatch
from tests.hub.analytics.conftest import T0
from tests.hub.fleet import MANIFEST_POLICY, POLICY
from tests.hub.telemetry.conftest import UsageShop, rec

MAX_PAYLOAD = 64 * 1024


def telemetry_handlers() -> list[BatchHandler]:
    (plugin,) = [p for p in load_plugins() if p.name == "telemetry"]
    assert plugin.inbound is not None and plugin.models_module == "hub.telemetry.models"
    assert {r.prefix for r in plugin.routers} == {"/usage", "/meters"}
    # The usage handler reads only the settings (its skew window) from the context.
    context: Any = SimpleNamespace(settings=Settings())
    return list(plugin.inbound(context))


def make_router(factory: sessionmaker[Session], handlers: list[BatchHandler]) -> InboundRouter:
    return InboundRouter(
        session_factory=factory,
        claim_policy=POLICY,
        manifest_policy=MANIFEST_POLICY,
        clock=lambda: T0 + timedelta(hours=1),
        max_payload_bytes=MAX_PAYLOAD,
        handlers=handlers,
    )


def usage_up(device_id: str, payload: bytes) -> Inbound:
    return Inbound(topics.device_up(device_id, topics.UpKind.USAGE), payload)


def batch_payload(records: list[Any]) -> bytes:
    return cbor.encode({0: 1, 1: "usage_batch", 2: records})


@pytest.fixture
def router(usage: UsageShop) -> InboundRouter:
    handlers = telemetry_handlers()
    assert isinstance(handlers[0], UsageHandler) and handlers[0].kind == "usage"
    return make_router(usage.factory, handlers)


def _replies(router: InboundRouter, batch: list[Inbound]) -> list[tuple[str, Any]]:
    return [(o.topic, decode_message(o.payload)) for o in router.handle_batch(batch).outbound]


def test_the_plugin_handler_stores_and_acks(usage: UsageShop, router: InboundRouter) -> None:
    a, b = usage.devices
    payload = encode_message(UsageBatch(records=(rec(1, 2), rec(2, 3))))
    out = _replies(router, [usage_up(a, payload), usage_up(b, payload), usage_up(a, payload)])
    acks = [(t, [r.code for r in m.results]) for t, m in out if isinstance(m, UsageAck)]
    # one ack per device per batch: a's two messages are answered together
    assert acks == [
        (f"d/{a}/down/usage_ack", ["stored", "stored", "duplicate", "duplicate"]),
        (f"d/{b}/down/usage_ack", ["stored", "stored"]),
    ]
    assert usage.total() == 10


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (batch_payload([]), "invalid_message"),  # empty batch
        (batch_payload([[1, s, "api.calls", 1, 1] for s in range(1, 1002)]), "invalid_message"),
        (batch_payload([[1, 1, "api.calls"]]), "invalid_message"),  # short record
        (batch_payload([["1", 1, "api.calls", 1, 1]]), "invalid_message"),  # key not a uint
        (batch_payload([[1, -1, "api.calls", 1, 1]]), "invalid_message"),
        (
            b"\xa3\x00\x01\x01\x6busage_batch\x02\x81\x85\x01\x01\x62\xff\xfe\x01\x01",
            "decode_error",
        ),
        (b"\xff" * 10, "decode_error"),
        (b"\x00" * (MAX_PAYLOAD + 1), "payload_too_large"),
        (encode_message(UsageAck(results=((1, 1, "stored"),))), "invalid_message"),  # type: ignore[arg-type]
    ],
    ids=[
        "empty",
        "1001",
        "short",
        "text-key",
        "negative-seq",
        "bad-utf8",
        "garbage",
        "huge",
        "ack",
    ],
)
def test_a_bad_message_is_refused_whole_and_nothing_is_stored(
    usage: UsageShop, router: InboundRouter, payload: bytes, code: str
) -> None:
    device = usage.devices[0]
    good = encode_message(UsageBatch(records=(rec(1, 4),)))
    out = _replies(router, [usage_up(device, payload), usage_up(device, good)])
    errors = [m.code for t, m in out if isinstance(m, ErrorReply)]
    assert errors == [code] and all(t.startswith(f"d/{device}/down/") for t, _ in out)
    acks = [[r.code for r in m.results] for _, m in out if isinstance(m, UsageAck)]
    assert acks == [["stored"]]  # the rest of the MQTT batch went on
    assert usage.total(device) == 4


def test_an_unclaimed_sender_is_ignored(usage: UsageShop, router: InboundRouter) -> None:
    stranger = usage.shop.device("UNCLAIMED")  # registered, never claimed
    out = _replies(router, [usage_up(stranger, encode_message(UsageBatch(records=(rec(1),))))])
    assert out == []
    assert usage.total(stranger) == 0


def test_a_database_failure_fails_the_batch_and_nothing_is_answered(usage: UsageShop) -> None:
    class Broken(UsageHandler):
        def handle(self, session: Session, items: Any, now: Any) -> Any:
            replies = super().handle(session, items, now)
            cause = Exception(f"database or disk is full after {len(replies)} replies")
            raise OperationalError("INSERT", {}, cause)

    router = make_router(usage.factory, [Broken()])
    device = usage.devices[0]
    payload = encode_message(UsageBatch(records=(rec(1, 5),)))
    with pytest.raises(OperationalError, match="disk is full"):
        router.handle_batch([usage_up(device, payload)])
    assert usage.total(device) == 0  # rolled back: the device replays, nothing was acked
    retry = make_router(usage.factory, telemetry_handlers())
    codes = [
        [r.code for r in m.results]
        for _, m in _replies(retry, [usage_up(device, payload)])
        if isinstance(m, UsageAck)
    ]
    assert codes == [["stored"]] and usage.total(device) == 5
