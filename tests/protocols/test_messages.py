import contextlib
import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols import cbor
from protocols.errors import (
    DecodeError,
    MessageError,
    PayloadTooLarge,
    ProtocolError,
    UnsupportedVersion,
)
from protocols.messages import (
    ALL_MESSAGES,
    MESSAGE_TYPES,
    ClaimAccepted,
    ClaimRequest,
    ErrorReply,
    Hello,
    ManifestAck,
    ManifestDelivery,
    RotationDelivery,
    SeatReply,
    SeatRequest,
    State,
    Status,
    TrustAnchor,
    decode_as,
    decode_message,
    encode_message,
)
from tests.protocols.strategies.firmware import FIRMWARE_STRATEGIES
from tests.protocols.strategies.usage import USAGE_STRATEGIES

ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", fullmatch=True)
texts = st.text(
    alphabet=st.characters(exclude_categories=("Cs", "Cc")),
    min_size=1,
    max_size=64,
)
uints = st.integers(min_value=0, max_value=2**64 - 1)
anchors = st.builds(
    TrustAnchor,
    kid=st.binary(min_size=1, max_size=32),
    alg=st.sampled_from([-8, -7]),
    key=st.binary(min_size=32, max_size=65),
    role=st.sampled_from(["manifest", "firmware"]),
)

STRATEGIES = {
    ClaimRequest: st.builds(
        ClaimRequest,
        serial=ids,
        method=st.sampled_from(["token", "key"]),
        pubkey=st.binary(min_size=32, max_size=32),
        nonce=st.binary(min_size=16, max_size=32),
        ts=uints,
        sig=st.binary(min_size=64, max_size=64),
        token=st.none() | texts,
    ),
    ClaimAccepted: st.builds(
        ClaimAccepted,
        device_id=ids,
        mqtt_username=ids,
        mqtt_password=texts,
        anchors=st.lists(anchors, min_size=1, max_size=8).map(tuple),
        server_time=uints,
    ),
    ErrorReply: st.builds(
        ErrorReply, code=texts, message=texts, ref=st.none() | texts, server_time=st.none() | uints
    ),
    Hello: st.builds(Hello, agent_version=texts, manifest_seq=uints, boot_epoch=uints),
    State: st.builds(State, device_id=ids, server_time=uints, manifest_seq=uints),
    Status: st.builds(Status, online=st.booleans()),
    ManifestDelivery: st.builds(
        ManifestDelivery,
        signed=st.binary(min_size=1, max_size=512),
        rotations=st.none()
        | st.lists(st.binary(min_size=1, max_size=64), min_size=1, max_size=3).map(tuple),
    ),
    ManifestAck: st.builds(
        ManifestAck,
        seq=uints,
        status=st.sampled_from(["accepted", "rejected", "unchanged"]),
        reason=st.none() | texts,
    ),
    RotationDelivery: st.builds(RotationDelivery, signed=st.binary(min_size=1, max_size=512)),
    SeatRequest: st.builds(
        SeatRequest, op=st.sampled_from(["checkout", "heartbeat", "release"]), product=texts
    ),
    SeatReply: st.builds(
        SeatReply,
        op=st.sampled_from(["checkout", "heartbeat", "release"]),
        product=texts,
        granted=st.booleans(),
        reason=texts,
    ),
    **USAGE_STRATEGIES,
    **FIRMWARE_STRATEGIES,
}


def test_every_message_type_has_a_strategy():
    assert set(STRATEGIES) == set(MESSAGE_TYPES.values())


def test_type_tags_are_unique_across_message_modules():
    tags = [cls.TYPE for cls in ALL_MESSAGES]
    assert len(tags) == len(set(tags)), tags
    assert all(tags)


@pytest.mark.parametrize("cls", list(STRATEGIES), ids=lambda c: c.__name__)
def test_round_trip(cls):
    @given(STRATEGIES[cls])
    @settings(max_examples=150)
    def check(message):
        encoded = encode_message(message)
        assert decode_message(encoded) == message
        assert decode_as(cls, encoded) == message
        assert encode_message(decode_message(encoded)) == encoded  # deterministic

    check()


def test_wire_layout_of_status():
    assert cbor.decode(encode_message(Status(online=True))) == {0: 1, 1: "status", 2: True}


def test_unknown_keys_are_tolerated():
    doc = cbor.decode(encode_message(Status(online=False)))
    doc[99] = "future field"
    assert decode_message(cbor.encode(doc)) == Status(online=False)


def test_unknown_major_version_is_rejected():
    with pytest.raises(UnsupportedVersion):
        decode_message(cbor.encode({0: 2, 1: "status", 2: True}))


@pytest.mark.parametrize(
    "doc",
    [
        [1, "status"],
        {1: "status", 2: True},
        {0: "1", 1: "status", 2: True},
        {0: True, 1: "status", 2: True},
        {0: 1, 1: "nope", 2: True},
        {0: 1, 1: "status"},
        {0: 1, 1: "status", 2: 1},
        {0: 1, 1: "hello", 2: "a", 3: -1, 4: 0},
        {0: 1, 1: "hello", 2: "a", 3: 2**64, 4: 0},
        {0: 1, 1: "hello", 2: "", 3: 0, 4: 0},
        {0: 1, 1: "hello", 2: "a\x00", 3: 0, 4: 0},
        {0: 1, 1: "hello", 2: "a" * 65, 3: 0, 4: 0},
        {0: 1, 1: "state", 2: "d", 3: 1.5, 4: 0},
        {0: 1, 1: "claimed", 2: "d", 3: "u", 4: "p", 5: [], 6: 0},
        {0: 1, 1: "claimed", 2: "d", 3: "u", 4: "p", 5: [[b"k", -8, b"short", "manifest"]], 6: 0},
        {0: 1, 1: "claim", 2: "s", 3: "token", 5: b"x" * 31, 6: b"n" * 16, 7: 0, 8: b"s" * 64},
    ],
)
def test_invalid_messages_raise_message_error(doc):
    with pytest.raises(MessageError):
        decode_message(cbor.encode(doc))


def test_decode_as_refuses_other_types():
    with pytest.raises(MessageError):
        decode_as(Hello, encode_message(Status(online=True)))


def test_size_cap_is_checked_first():
    with pytest.raises(PayloadTooLarge):
        decode_message(b"\x00" * 1025, max_size=1024)


def test_malformed_cbor_is_a_decode_error():
    with pytest.raises(DecodeError):
        decode_message(b"\xa1\x00")


@given(st.binary(max_size=512))
@settings(max_examples=3000)
def test_arbitrary_bytes_only_raise_protocol_errors(data):
    with contextlib.suppress(ProtocolError):
        decode_message(data)


@given(STRATEGIES[ClaimAccepted], st.data())
@settings(max_examples=300)
def test_mutated_messages_only_raise_protocol_errors(message, data):
    encoded = bytearray(encode_message(message))
    index = data.draw(st.integers(0, len(encoded) - 1))
    encoded[index] ^= 1 << data.draw(st.integers(0, 7))
    try:
        decoded = decode_message(bytes(encoded))
    except ProtocolError:
        return
    assert dataclasses.is_dataclass(decoded)


@pytest.mark.parametrize("bad", ["a\x85b", "a\x9fb", "a\x00", "a\x1bb", "a\x7f"])
def test_c0_c1_and_del_controls_are_refused_in_text(bad):
    with pytest.raises(MessageError):
        decode_message(cbor.encode({0: 1, 1: "hello", 2: bad, 3: 0, 4: 0}))


def test_manifest_ack_status_is_an_enumeration():
    with pytest.raises(MessageError):
        decode_message(cbor.encode({0: 1, 1: "manifest_ack", 2: 1, 3: "maybe"}))
