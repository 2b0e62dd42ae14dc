from __future__ import annotations

import secrets
from datetime import datetime
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from hub.audit.models import AuditEvent
from hub.clock import utc_now
from hub.inbound import BatchResult, InboundRouter
from hub.mqtt.outbound import Inbound
from hub.registry.models import Device, DeviceCredential
from protocols import cbor, topics
from protocols.messages import (
    ClaimAccepted,
    ErrorReply,
    Hello,
    ManifestDelivery,
    State,
    Status,
    decode_message,
    encode_message,
)
from tests.hub.conftest import Clock
from tests.hub.fleet import MANIFEST_POLICY, POLICY, Fleet, claim_request, new_key, raw

MAX_PAYLOAD = 1024


def router(factory: sessionmaker[Session], clock: Clock) -> InboundRouter:
    return InboundRouter(
        session_factory=factory,
        claim_policy=POLICY,
        manifest_policy=MANIFEST_POLICY,
        clock=clock,
        max_payload_bytes=MAX_PAYLOAD,
    )


def up(device_id: str, kind: topics.UpKind, payload: bytes) -> Inbound:
    return Inbound(topics.device_up(device_id, kind), payload)


def hello() -> bytes:
    return encode_message(Hello(agent_version="0.1.0", manifest_seq=0, boot_epoch=3))


def status(online: bool) -> bytes:
    return encode_message(Status(online=online))


def replies(result: BatchResult) -> list[tuple[str, Any]]:
    return [(out.topic, decode_message(out.payload)) for out in result.outbound]


def error_codes(result: BatchResult) -> dict[str, list[str]]:
    codes: dict[str, list[str]] = {}
    for topic, message in replies(result):
        if isinstance(message, ErrorReply):
            codes.setdefault(topic, []).append(message.code)
    return codes


def device_row(factory: sessionmaker[Session], device_id: str) -> Device:
    with factory() as s:
        device = s.get_one(Device, device_id)
        s.expunge(device)
        return device


def refusals(factory: sessionmaker[Session], client_id: str) -> list[AuditEvent]:
    with factory() as s:
        events = list(
            s.scalars(
                select(AuditEvent)
                .where(AuditEvent.actor == f"claim:{client_id}")
                .order_by(AuditEvent.id)
            )
        )
        s.expunge_all()
        return events


@pytest.fixture
def fleet(session_factory: sessionmaker[Session], clock: Clock) -> Fleet:
    return Fleet.create(session_factory, clock.now)


def claim_cid() -> str:
    return "claim-" + secrets.token_hex(12)


def test_mixed_batch(fleet: Fleet, session_factory: sessionmaker[Session], clock: Clock) -> None:
    alpha, _ = fleet.claimed_device("IN-A")
    beta, _ = fleet.claimed_device("IN-B")
    gamma, _ = fleet.claimed_device("IN-C")
    newbie = fleet.device("IN-NEW")
    token, _ = fleet.batch(["IN-NEW", "IN-A"])
    clock.advance(seconds=30)
    now: datetime = clock.now
    ts = int(now.timestamp())

    refused_cid, wrong_type_cid, accepted_cid, stale_cid = (claim_cid() for _ in range(4))
    _, _, secret = token.split("_", 2)
    bad_token = token.replace(secret, secret[::-1])
    oversize = cbor.encode({0: 1, 1: "hello", 2: "0.1.0", 3: 0, 4: 1, 99: b"x" * (MAX_PAYLOAD + 1)})
    assert decode_message(oversize, max_size=len(oversize)) is not None  # only its size is wrong
    future = cbor.encode({0: 2, 1: "hello", 2: "0.1.0", 3: 0, 4: 1})
    newbie_key = new_key()
    batch = [
        up(alpha, topics.UpKind.HELLO, hello()),
        up(beta, topics.UpKind.STATUS, status(True)),
        up(gamma, topics.UpKind.STATUS, b"\xa2\x00\x01"),  # truncated CBOR map
        up(gamma, topics.UpKind.HELLO, oversize),
        up(beta, topics.UpKind.HELLO, future),
        up(alpha, topics.UpKind.HELLO, status(False)),  # a status on the hello topic
        up(gamma, topics.UpKind.STATUS, hello()),  # a hello on the status topic
        Inbound(topics.claim_request(wrong_type_cid), hello()),
        Inbound("some/other/tree", hello()),
        Inbound("d/not-a-device/up/hello", hello()),
        Inbound(f"d/{alpha}/up/no_such_kind", hello()),
        Inbound(
            topics.claim_request(refused_cid),
            encode_message(
                claim_request(
                    new_key(), serial="IN-NEW", token=bad_token, ts=ts, client_id=refused_cid
                )
            ),
        ),
        Inbound(
            topics.claim_request(stale_cid),
            encode_message(
                claim_request(
                    new_key(), serial="IN-A", token=token, ts=ts - 3600, client_id=stale_cid
                )
            ),
        ),
        Inbound(
            topics.claim_request(accepted_cid),
            encode_message(
                claim_request(
                    newbie_key, serial="IN-NEW", token=token, ts=ts, client_id=accepted_cid
                )
            ),
        ),
        up(gamma, topics.UpKind.STATUS, status(True)),  # good message after bad ones
    ]
    result = router(session_factory, clock).handle_batch(batch)

    got = replies(result)
    state_topic = topics.device_down(alpha, topics.DownKind.STATE)
    # A first hello gets the state (its first manifest is seq 1) and that manifest.
    assert got[0] == (state_topic, State(device_id=alpha, server_time=ts, manifest_seq=1))
    assert got[1][0] == topics.device_down(alpha, topics.DownKind.MANIFEST)
    assert isinstance(got[1][1], ManifestDelivery)
    assert error_codes(result) == {
        topics.device_down(gamma, topics.DownKind.ERROR): [
            "decode_error",
            "payload_too_large",
            "invalid_message",
        ],
        topics.device_down(beta, topics.DownKind.ERROR): ["unsupported_version"],
        topics.device_down(alpha, topics.DownKind.ERROR): ["invalid_message"],
        topics.claim_response(wrong_type_cid): ["invalid_message"],
        topics.claim_response(refused_cid): ["bad_token"],
        topics.claim_response(stale_cid): ["stale_request"],
    }
    # Every error names the refused message's topic.
    for out, (topic, message) in zip(result.outbound, got, strict=True):
        assert out.qos == 1
        if isinstance(message, ErrorReply):
            assert message.ref is not None
            assert message.ref in {item.topic for item in batch}
            assert topic.startswith(("claim/", "d/"))
    assert [topic for topic, _ in got].count(state_topic) == 1
    # Nothing answered the unroutable topics.
    assert len(got) == 1 + 1 + 8 + 1  # state, manifest, errors, claim answer

    accepted = [m for t, m in got if t == topics.claim_response(accepted_cid)]
    assert len(accepted) == 1 and isinstance(accepted[0], ClaimAccepted)
    assert accepted[0].device_id == newbie
    assert result.credentials_changed is True

    # Good messages were committed despite the bad ones around them.
    a, b, c, n = (device_row(session_factory, d) for d in (alpha, beta, gamma, newbie))
    assert (a.online, a.last_connect_at, a.last_seen_at) == (True, now, now)
    assert (b.online, b.last_seen_at, b.last_connect_at) == (True, now, None)
    assert (c.online, c.last_seen_at, c.last_connect_at) == (True, now, None)
    assert (n.status, n.public_key) == ("claimed", raw(newbie_key))
    with session_factory() as s:
        assert s.get(DeviceCredential, newbie) is not None

    [refused] = refusals(session_factory, refused_cid)
    assert (refused.action, refused.outcome) == ("claim.refused", "refused")
    assert refused.detail is not None and refused.detail["code"] == "bad_token"
    assert refused.at == now
    assert secret not in str(refused.detail)
    [stale] = refusals(session_factory, stale_cid)
    assert (stale.action, stale.outcome, stale.detail["code"]) == (  # type: ignore[index]
        "claim.refused",
        "refused",
        "stale_request",
    )
    assert refusals(session_factory, accepted_cid) == []
    # Only a refusal caused by the sender's clock carries the hub's time.
    server_times = {
        topic: message.server_time for topic, message in got if isinstance(message, ErrorReply)
    }
    assert server_times[topics.claim_response(stale_cid)] == int(now.timestamp())
    assert server_times[topics.claim_response(refused_cid)] is None


def test_refusal_of_known_device_is_audited_for_its_tenant(
    fleet: Fleet, session_factory: sessionmaker[Session], clock: Clock
) -> None:
    device_id, _ = fleet.claimed_device("IN-AC")
    token, _ = fleet.batch(["IN-AC"])
    cid = claim_cid()
    request = claim_request(
        new_key(), serial="IN-AC", token=token, ts=int(clock.now.timestamp()), client_id=cid
    )
    before = device_row(session_factory, device_id)
    result = router(session_factory, clock).handle_batch(
        [Inbound(topics.claim_request(cid), encode_message(request))]
    )
    assert error_codes(result) == {topics.claim_response(cid): ["already_claimed"]}
    assert result.credentials_changed is False
    [event] = refusals(session_factory, cid)
    assert (event.tenant_id, event.target_type, event.target_id) == (
        fleet.tenant_id,
        "device",
        device_id,
    )
    assert (event.action, event.outcome) == ("claim.refused", "refused")
    after = device_row(session_factory, device_id)
    assert (after.status, after.public_key, after.claimed_at) == (
        before.status,
        before.public_key,
        before.claimed_at,
    )


def test_credentials_changed_only_when_a_claim_was_accepted(
    fleet: Fleet, session_factory: sessionmaker[Session], clock: Clock
) -> None:
    device_id, _ = fleet.claimed_device("IN-CC")
    fleet.device("IN-CC2")
    token, _ = fleet.batch(["IN-CC2"])
    hub = router(session_factory, clock)
    cid = claim_cid()
    stale = claim_request(new_key(), serial="IN-CC2", token=token, ts=0, client_id=cid)
    quiet = hub.handle_batch(
        [
            up(device_id, topics.UpKind.HELLO, hello()),
            up(device_id, topics.UpKind.STATUS, status(True)),
            Inbound(topics.claim_request(cid), encode_message(stale)),
        ]
    )
    assert quiet.credentials_changed is False
    assert hub.handle_batch([]).credentials_changed is False
    good = claim_request(
        new_key(), serial="IN-CC2", token=token, ts=int(clock.now.timestamp()), client_id=cid
    )
    loud = hub.handle_batch([Inbound(topics.claim_request(cid), encode_message(good))])
    assert loud.credentials_changed is True
    [(topic, message)] = replies(loud)
    assert topic == topics.claim_response(cid) and isinstance(message, ClaimAccepted)


def test_hello_from_unknown_or_unclaimed_device_dropped(
    fleet: Fleet, session_factory: sessionmaker[Session], clock: Clock
) -> None:
    unclaimed = fleet.device("IN-UN")
    unknown = "dev-" + secrets.token_hex(10)
    result = router(session_factory, clock).handle_batch(
        [
            up(unknown, topics.UpKind.HELLO, hello()),
            up(unknown, topics.UpKind.STATUS, status(True)),
            up(unclaimed, topics.UpKind.HELLO, hello()),
            up(unclaimed, topics.UpKind.STATUS, status(True)),
        ]
    )
    assert result.outbound == []
    assert result.credentials_changed is False
    row = device_row(session_factory, unclaimed)
    assert (row.online, row.last_seen_at, row.last_connect_at) == (False, None, None)
    with session_factory() as s:
        assert s.get(Device, unknown) is None


def test_hello_from_disabled_device_dropped(
    fleet: Fleet, session_factory: sessionmaker[Session], clock: Clock
) -> None:
    device_id, _ = fleet.claimed_device("IN-DIS")
    fleet.set_status(device_id, "disabled")
    result = router(session_factory, clock).handle_batch(
        [up(device_id, topics.UpKind.HELLO, hello())]
    )
    assert result.outbound == []
    assert device_row(session_factory, device_id).online is False


def test_reply_to_hello_is_state_for_that_device(
    fleet: Fleet, session_factory: sessionmaker[Session], clock: Clock
) -> None:
    first, _ = fleet.claimed_device("IN-H1")
    second, _ = fleet.claimed_device("IN-H2")
    clock.advance(seconds=5)
    result = router(session_factory, clock).handle_batch(
        [up(second, topics.UpKind.HELLO, hello()), up(first, topics.UpKind.HELLO, hello())]
    )
    ts = int(clock.now.timestamp())
    states = [(t, m) for t, m in replies(result) if isinstance(m, State)]
    assert states == [
        (
            topics.device_down(second, topics.DownKind.STATE),
            State(device_id=second, server_time=ts, manifest_seq=1),
        ),
        (
            topics.device_down(first, topics.DownKind.STATE),
            State(device_id=first, server_time=ts, manifest_seq=1),
        ),
    ]
    deliveries = [t for t, m in replies(result) if isinstance(m, ManifestDelivery)]
    assert deliveries == [
        topics.device_down(second, topics.DownKind.MANIFEST),
        topics.device_down(first, topics.DownKind.MANIFEST),
    ]


def test_payload_at_the_size_cap_is_decoded(
    fleet: Fleet, session_factory: sessionmaker[Session], clock: Clock
) -> None:
    device_id, _ = fleet.claimed_device("IN-CAP")
    base = cbor.encode({0: 1, 1: "status", 2: True, 99: b""})
    filler = b"x" * (MAX_PAYLOAD - len(base) - 2)  # 2 more bytes of bstr length header
    payload = cbor.encode({0: 1, 1: "status", 2: True, 99: filler})
    assert len(payload) == MAX_PAYLOAD
    hub = router(session_factory, clock)
    assert hub.handle_batch([up(device_id, topics.UpKind.STATUS, payload)]).outbound == []
    assert device_row(session_factory, device_id).online is True
    over = cbor.encode({0: 1, 1: "status", 2: False, 99: filler + b"x"})
    result = hub.handle_batch([up(device_id, topics.UpKind.STATUS, over)])
    assert error_codes(result) == {
        topics.device_down(device_id, topics.DownKind.ERROR): ["payload_too_large"]
    }
    assert device_row(session_factory, device_id).online is True


def test_messages_on_outbound_topics_are_dropped_without_reply(session_factory):
    router = InboundRouter(
        session_factory=session_factory,
        claim_policy=POLICY,
        manifest_policy=MANIFEST_POLICY,
        clock=utc_now,
        max_payload_bytes=4096,
    )
    payload = encode_message(Status(online=True))
    result = router.handle_batch(
        [
            Inbound("d/dev-00000000000000000009/down/state", payload),
            Inbound("claim/claim-abcdef/res", payload),
        ]
    )
    assert result.outbound == []
    assert not result.credentials_changed
