"""Hypothesis strategies for the messages in ``protocols.usage_messages``.

``tests/protocols/test_messages.py`` round-trips every registered message type
and fails when one has no strategy here.
"""

from typing import Any

from hypothesis import strategies as st

from protocols.usage_messages import (
    ACK_CODES,
    MAX_QUANTITY,
    MAX_RECORDS,
    AckResult,
    RawUsageRecord,
    UsageAck,
    UsageBatch,
    UsageRecord,
)

uints = st.integers(min_value=0, max_value=2**64 - 1)
meters = st.text(alphabet=st.characters(exclude_categories=("Cs", "Cc")), min_size=1, max_size=64)
quantities = st.integers(min_value=0, max_value=MAX_QUANTITY) | st.floats(
    min_value=0.0, max_value=float(MAX_QUANTITY), allow_nan=False, allow_infinity=False
).filter(lambda q: str(q)[0] != "-")

valid_records = st.builds(
    UsageRecord,
    boot_epoch=uints,
    seq=uints,
    meter=meters,
    quantity=quantities,
    ts=uints,
    dim=st.none() | meters,
)
"""Records that :func:`protocols.usage_messages.parse_record` accepts."""

# Raw values the structure check lets through but parse_record refuses (no NaN:
# it would not compare equal to itself after a round trip).
junk = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=80),
    st.binary(max_size=8),
)
raw_records = valid_records.map(UsageRecord.to_raw) | st.builds(
    lambda epoch, seq, rest: RawUsageRecord((epoch, seq, *rest)),
    uints,
    uints,
    st.lists(junk, min_size=3, max_size=4),
)

usage_batches = st.builds(
    UsageBatch, records=st.lists(raw_records, min_size=1, max_size=20).map(tuple)
)
ack_results = st.builds(AckResult, uints, uints, st.sampled_from(ACK_CODES))
usage_acks = st.builds(UsageAck, results=st.lists(ack_results, min_size=1, max_size=20).map(tuple))

USAGE_STRATEGIES: dict[type, Any] = {UsageBatch: usage_batches, UsageAck: usage_acks}

__all__ = [
    "MAX_RECORDS",
    "USAGE_STRATEGIES",
    "ack_results",
    "quantities",
    "raw_records",
    "usage_acks",
    "usage_batches",
    "valid_records",
]
