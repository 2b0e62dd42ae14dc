"""The usage wire messages: structure refusals, per-record refusals, fuzzing."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols import cbor, topics
from protocols.errors import DecodeError, MessageError, ProtocolError
from protocols.messages import MESSAGE_TYPES, decode_as, decode_message, encode_message
from protocols.usage_messages import (
    BATCH_OVERHEAD,
    MAX_QUANTITY,
    MAX_RECORDS,
    AckResult,
    RawUsageRecord,
    UsageAck,
    UsageBatch,
    UsageRecord,
    parse_record,
    record_size,
)
from tests.protocols.strategies.usage import raw_records, valid_records


def _payload(body: dict) -> bytes:
    return cbor.encode({0: 1, 1: "usage_batch", **body})


def _record(*items: object) -> list[object]:
    return list(items)


GOOD = [1, 1, "api_calls", 3, 1_700_000_000]


def test_both_types_are_registered_under_their_tags() -> None:
    assert MESSAGE_TYPES["usage_batch"] is UsageBatch
    assert MESSAGE_TYPES["usage_ack"] is UsageAck
    assert topics.UpKind.USAGE.value == "usage"
    assert topics.DownKind.USAGE_ACK.value == "usage_ack"


def test_a_batch_encodes_as_documented() -> None:
    batch = UsageBatch(
        records=(
            UsageRecord(7, 1, "api_calls", 2, 1_700_000_000).to_raw(),
            UsageRecord(7, 2, "storage", 0.5, 1_700_000_001, dim="user-4").to_raw(),
        )
    )
    encoded = encode_message(batch)
    assert cbor.decode(encoded) == {
        0: 1,
        1: "usage_batch",
        2: [[7, 1, "api_calls", 2, 1_700_000_000], [7, 2, "storage", 0.5, 1_700_000_001, "user-4"]],
    }
    decoded = decode_as(UsageBatch, encoded)
    assert [r.key for r in decoded.records] == [(7, 1), (7, 2)]
    assert parse_record(decoded.records[1]) == UsageRecord(
        7, 2, "storage", 0.5, 1_700_000_001, "user-4"
    )


def test_an_ack_encodes_as_documented() -> None:
    ack = UsageAck(results=(AckResult(7, 1, "stored"), AckResult(7, 2, "duplicate")))
    assert cbor.decode(encode_message(ack)) == {
        0: 1,
        1: "usage_ack",
        2: [[7, 1, "stored"], [7, 2, "duplicate"]],
    }
    assert decode_as(UsageAck, encode_message(ack)).results[1].key == (7, 2)


@pytest.mark.parametrize(
    ("records", "reason"),
    [
        ([], "1..1000"),
        ([GOOD] * (MAX_RECORDS + 1), "1..1000"),
        ("not an array", "1..1000"),
        ({"a": 1}, "1..1000"),
        ([GOOD[:4]], "5 or 6"),
        ([[*GOOD, "dim", "extra"]], "5 or 6"),
        (["flat"], "5 or 6"),
        ([[-1, 1, "m", 1, 1]], "two uints"),
        ([[1, "1", "m", 1, 1]], "two uints"),
        ([[True, 1, "m", 1, 1]], "two uints"),
        ([[1, 1.0, "m", 1, 1]], "two uints"),
        ([[1, None, "m", 1, 1]], "two uints"),
    ],
)
def test_structure_refusals_fail_the_whole_message(records: object, reason: str) -> None:
    with pytest.raises(MessageError, match=reason):
        decode_message(_payload({2: records}))


def test_a_batch_without_records_is_refused() -> None:
    with pytest.raises(MessageError, match="missing field records"):
        decode_message(_payload({}))


def test_exactly_one_and_a_thousand_records_are_accepted() -> None:
    assert len(decode_as(UsageBatch, _payload({2: [GOOD]})).records) == 1
    full = [[1, seq, "m", 1, 1] for seq in range(MAX_RECORDS)]
    assert len(decode_as(UsageBatch, _payload({2: full})).records) == MAX_RECORDS


def test_unknown_map_keys_are_tolerated() -> None:
    assert decode_as(UsageBatch, _payload({2: [GOOD], 99: "future"})).records[0].seq == 1


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        (_record(1, 1, "m", -1, 1), "negative"),
        (_record(1, 1, "m", -0.5, 1), "negative"),
        (_record(1, 1, "m", -0.0, 1), "negative"),
        (_record(1, 1, "m", math.nan, 1), "finite"),
        (_record(1, 1, "m", math.inf, 1), "finite"),
        (_record(1, 1, "m", -math.inf, 1), "finite"),
        (_record(1, 1, "m", MAX_QUANTITY + 1, 1), "exceeds"),
        (_record(1, 1, "m", float(MAX_QUANTITY) * 1.5, 1), "exceeds"),
        (_record(1, 1, "m", 2**64 - 1, 1), "exceeds"),
        (_record(1, 1, "m", True, 1), "number"),
        (_record(1, 1, "m", "3", 1), "number"),
        (_record(1, 1, "m", None, 1), "number"),
        (_record(1, 1, "", 1, 1), "meter"),
        (_record(1, 1, "m" * 65, 1, 1), "meter"),
        (_record(1, 1, "bad\nmeter", 1, 1), "meter"),
        (_record(1, 1, "bad\x7fmeter", 1, 1), "meter"),
        (_record(1, 1, b"meter", 1, 1), "meter"),
        (_record(1, 1, 7, 1, 1), "meter"),
        (_record(1, 1, "bad\udcffmeter", 1, 1), "UTF-8"),
        (_record(1, 1, "m", 1, -1), "ts"),
        (_record(1, 1, "m", 1, 1.5), "ts"),
        (_record(1, 1, "m", 1, "now"), "ts"),
        (_record(1, 1, "m", 1, 1, ""), "dim"),
        (_record(1, 1, "m", 1, 1, "d" * 65), "dim"),
        (_record(1, 1, "m", 1, 1, None), "dim"),
        (_record(1, 1, "m", 1, 1, 5), "dim"),
        (_record(1, 1, "m", 1, 1, "tab\tdim"), "dim"),
    ],
)
def test_parse_record_refuses_each_bad_value(record: list[object], reason: str) -> None:
    raw = RawUsageRecord(record)
    with pytest.raises(MessageError, match=reason):
        parse_record(raw)


def test_bad_records_decode_so_the_receiver_can_answer_each() -> None:
    good, bad = [1, 1, "api_calls", 1, 5], [1, 2, "api_calls", -1, 5]
    batch = decode_as(UsageBatch, _payload({2: [good, bad]}))
    assert parse_record(batch.records[0]).quantity == 1
    with pytest.raises(MessageError):
        parse_record(batch.records[1])


@pytest.mark.parametrize(
    "quantity", [0, 0.0, 1, 2.5, 1e-9, MAX_QUANTITY, float(MAX_QUANTITY), 123_456_789]
)
def test_parse_record_accepts_the_edges(quantity: float) -> None:
    raw = RawUsageRecord([0, 0, "m" * 64, quantity, 0, "d" * 64])
    assert parse_record(raw).quantity == quantity


@pytest.mark.parametrize(
    "results",
    [
        [],
        [[1, 1, "stored"]] * (MAX_RECORDS + 1),
        [[1, 1]],
        [[1, 1, "stored", "x"]],
        [[1, 1, "lost"]],
        [[1, 1, 3]],
        [[-1, 1, "stored"]],
        [[1, True, "stored"]],
        "stored",
    ],
)
def test_bad_acks_are_refused(results: object) -> None:
    with pytest.raises(MessageError):
        decode_message(cbor.encode({0: 1, 1: "usage_ack", 2: results}))


@given(valid_records)
def test_valid_records_survive_a_round_trip_and_parse(record: UsageRecord) -> None:
    decoded = decode_as(UsageBatch, encode_message(UsageBatch(records=(record.to_raw(),))))
    assert parse_record(decoded.records[0]) == record


@given(raw_records)
def test_record_size_is_its_share_of_the_batch(raw: RawUsageRecord) -> None:
    alone = len(encode_message(UsageBatch(records=(raw,))))
    assert record_size(raw) < alone <= record_size(raw) + BATCH_OVERHEAD


def _check_parsed(raw: RawUsageRecord) -> None:
    """A record either raises MessageError or comes out within every limit."""
    try:
        record = parse_record(raw)
    except MessageError:
        return
    assert math.isfinite(record.quantity) and 0 <= record.quantity <= MAX_QUANTITY
    assert 0 < len(record.meter) <= 64
    assert record.dim is None or 0 < len(record.dim) <= 64


@given(st.binary(max_size=512))
@settings(max_examples=400)
def test_arbitrary_bytes_only_raise_protocol_errors(data: bytes) -> None:
    try:
        message = decode_message(data)
    except ProtocolError:
        return
    if isinstance(message, UsageBatch):
        for raw in message.records:
            _check_parsed(raw)


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text() | st.binary(),
        lambda children: st.lists(children, max_size=7),
        max_leaves=30,
    )
)
@settings(max_examples=400)
def test_arbitrary_record_arrays_only_raise_message_errors(records: object) -> None:
    try:
        payload = _payload({2: records})
    except MessageError:
        return  # not encodable (e.g. an int beyond 64 bits)
    try:
        batch = decode_as(UsageBatch, payload)
    except ProtocolError:
        return
    for raw in batch.records:
        _check_parsed(raw)


def test_truncated_and_trailing_bytes_are_decode_errors() -> None:
    payload = _payload({2: [GOOD]})
    with pytest.raises(DecodeError):
        decode_message(payload[:-1])
    with pytest.raises(DecodeError):
        decode_message(payload + b"\x00")


@given(
    st.lists(raw_records, min_size=1, max_size=5),
    st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 255)), min_size=1, max_size=4),
)
@settings(max_examples=400)
def test_mutated_batches_only_raise_protocol_errors(
    records: list[RawUsageRecord], flips: list[tuple[int, int]]
) -> None:
    payload = bytearray(encode_message(UsageBatch(records=tuple(records))))
    for position, value in flips:
        payload[position % len(payload)] = value
    try:
        message = decode_message(bytes(payload))
    except ProtocolError:
        return
    if isinstance(message, UsageBatch):
        for raw in message.records:
            _check_parsed(raw)
