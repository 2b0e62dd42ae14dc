"""The ack fast path encodes exactly what the generic encoder does."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hub.telemetry.acks import encode_ack
from protocols.messages import decode_message, encode_message
from protocols.usage_messages import ACK_CODES, AckResult, UsageAck

results = st.lists(
    st.tuples(
        st.integers(0, 2**64 - 1) | st.sampled_from([0, 23, 24, 255, 256, 65535, 65536, 2**32]),
        st.integers(0, 2**64 - 1) | st.integers(0, 70_000),
        st.sampled_from(ACK_CODES),
    ),
    min_size=1,
    max_size=50,
)


@given(results)
def test_same_bytes_as_encode_message(items: list[tuple[int, int, str]]) -> None:
    expected = encode_message(UsageAck(results=tuple(AckResult(*item) for item in items)))
    assert encode_ack(items) == expected
    decoded = decode_message(encode_ack(items))
    assert isinstance(decoded, UsageAck) and [tuple(r) for r in decoded.results] == items


def test_a_full_ack() -> None:
    items = [(7, seq, "stored") for seq in range(1, 1001)]
    expected = encode_message(UsageAck(results=tuple(AckResult(*item) for item in items)))
    assert encode_ack(items) == expected


@pytest.mark.parametrize(
    "items",
    [[], [(1, 1, "stored")] * 1001, [(1, 1, "lost")], [(-1, 1, "stored")], [(1, 2**64, "stored")]],
    ids=["empty", "too-many", "unknown-code", "negative", "too-big"],
)
def test_refuses_what_is_not_an_ack(items: list[tuple[int, int, str]]) -> None:
    with pytest.raises(ValueError):
        encode_ack(items)
