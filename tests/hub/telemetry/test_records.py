"""The hub's record check agrees with the wire's ``parse_record`` (property tests)."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from hub.telemetry.policy import MAX_KEY
from hub.telemetry.records import MAX_TS, Parsed, Refused, check_record, to_decimal, to_micro
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
