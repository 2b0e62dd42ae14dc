"""The hub's record check agrees with the wire's ``parse_record`` (property tests)."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from hub.telemetry.policy import MAX_KEY
from hub.telemetry.records import (
    MAX_TS,
    Parsed,
    Refused,
    check_record,
    check_records,
    to_decimal,
    to_micro,
)
from protocols.errors import MessageError
from protocols.usage_messages import RawUsageRecord, parse_record
from tests.protocols.strategies.usage import quantities, raw_records


@given(raw_records)
def test_check_record_accepts_exactly_what_parse_record_accepts(raw: RawUsageRecord) -> None:
    try:
        wire = parse_record(raw)
    except MessageError as exc:
        result = check_record(raw)
        assert isinstance(result, Refused)
        if raw.boot_epoch <= MAX_KEY and 1 <= raw.seq <= MAX_KEY:
            assert result.reason == str(exc)[:200]
        return
    result = check_record(raw)
    hub_only = raw.boot_epoch > MAX_KEY or raw.seq > MAX_KEY or raw.seq < 1 or wire.ts > MAX_TS
    if hub_only:
        assert isinstance(result, Refused)
        return
    assert isinstance(result, Parsed)
    assert (result.boot_epoch, result.seq, result.meter, result.dimension, result.ts) == (
        wire.boot_epoch, wire.seq, wire.meter, wire.dim, wire.ts,
    )  # fmt: skip
    assert result.quantity == Decimal(repr(wire.quantity)).quantize(Decimal("0.000001"))


@given(raw_records)
def test_check_record_is_stable_under_its_memo(raw: RawUsageRecord) -> None:
    assert check_record(raw) == check_record(raw)


@given(quantities)
def test_micro_units_are_exact(quantity: int | float) -> None:
    micro = to_micro(quantity)
    assert to_decimal(micro) == Decimal(repr(quantity)).quantize(Decimal("0.000001"))
    assert isinstance(micro, int) and micro >= 0


@given(st.integers(min_value=0, max_value=10**12))
def test_whole_quantities(quantity: int) -> None:
    assert to_micro(quantity) == quantity * 1_000_000
    assert to_micro(float(quantity)) == to_micro(quantity) or quantity > 2**53


@given(st.lists(raw_records, max_size=20), st.booleans())
def test_check_records_answers_as_check_record_one_by_one(
    raws: list[RawUsageRecord], warm: bool
) -> None:
    """The batch loop's inline fast path changes nothing, with the memos cold or warm."""
    if warm:
        for raw in raws:
            check_record(raw)
    batch = check_records(raws)
    assert batch == [check_record(raw) for raw in raws]
    assert [type(r) for r in batch] == [type(check_record(raw)) for raw in raws]


M = "api.calls"


def test_check_records_fast_path_refuses_what_check_record_refuses() -> None:
    """Values at and past each bound, through the inline path (meter and float memos warm)."""
    check_record(RawUsageRecord((1, 1, M, 1.25, 1)))
    edge = [
        (1, 1, M, 1.25, 1), (1, 1, M, 10**12, MAX_TS),
        (1, 1, M, 10**12 + 1, 1), (1, 1, M, -1, 1),
        (1, 1, M, -1.25, 1), (1, 1, M, 0.0, 1), (1, 1, M, -0.0, 1),
        (1, 1, M, float("nan"), 1), (1, 1, M, float("inf"), 1),
        (1, 1, M, True, 1), (1, 1, M, 1, MAX_TS + 1), (1, 1, M, 1, -1),
        (1, 1, M, 1, True), (1, 0, M, 1, 1), (MAX_KEY + 1, 1, M, 1, 1),
        (1, MAX_KEY + 1, M, 1, 1), (1, MAX_KEY, M, 1, 1),
        (1, 1, M, 1, 1, "dim"), (1, 1, "", 1, 1), (1, 1, 7, 1, 1),
    ]  # fmt: skip
    raws = [RawUsageRecord(items) for items in edge]
    assert check_records(raws) == [check_record(raw) for raw in raws]
    assert [type(r) for r in check_records(raws)] == [
        Parsed, Parsed, Refused, Refused, Refused, Parsed, Refused, Refused, Refused, Refused,
        Refused, Refused, Refused, Refused, Refused, Refused, Parsed, Parsed, Refused, Refused,
    ]  # fmt: skip
