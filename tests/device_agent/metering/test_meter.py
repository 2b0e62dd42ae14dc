"""The application's meter: validation, entitlement, caps per period and overage policy."""

import math
from decimal import Decimal

import pytest

from device_agent.errors import StateError
from device_agent.metering.api import open_meter
from device_agent.metering.errors import CapExceeded, InvalidUsage, NotEntitled
from device_agent.metering.meter import Meter
from device_agent.trust_store import TrustStore
from protocols.manifest import FeatureEntry
from tests.device_agent.metering.harness import DAY, T0, FakeEntitlements, meter_for, open_buffer
from tests.device_agent.test_trust import issued, signed
from tests.device_agent.test_trust_store import IDENTITY


@pytest.fixture
def buffer(tmp_path):
    buffer = open_buffer(tmp_path)
    buffer.begin_epoch(1)
    yield buffer
    buffer.close()


def capped(cap: int, overage: str | None, period: str = "day") -> FeatureEntry:
    return FeatureEntry(enabled=True, cap=cap, period=period, overage=overage)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("meter", "quantity", "dim", "reason"),
    [
        ("api_calls", -1, None, "negative"),
        ("api_calls", -0.001, None, "negative"),
        ("api_calls", math.nan, None, "finite"),
        ("api_calls", math.inf, None, "finite"),
        ("api_calls", -math.inf, None, "finite"),
        ("api_calls", 10**12 + 1, None, "exceeds"),
        ("api_calls", 1e300, None, "exceeds"),
        ("api_calls", True, None, "number"),
        ("api_calls", "1", None, "number"),
        ("", 1, None, "meter"),
        ("x" * 65, 1, None, "meter"),
        ("api\x00calls", 1, None, "meter"),
        ("api\udcffcalls", 1, None, "UTF-8"),
        (b"api_calls", 1, None, "meter"),
        ("api_calls", 1, "", "dim"),
        ("api_calls", 1, "d" * 65, "dim"),
        ("api_calls", 1, "\udc80", "UTF-8"),
    ],
)
def test_bad_usage_is_refused_before_a_key_is_minted(buffer, meter, quantity, dim, reason):
    with pytest.raises(InvalidUsage, match=reason) as refused:
        meter_for(buffer).record(meter, quantity, dim=dim)
    assert isinstance(refused.value, ValueError)
    stats = buffer.stats()
    assert (stats.pending, stats.last_seq, stats.dropped) == (0, 0, 0)


def test_a_valid_record_is_stored_with_its_key_time_and_dimension(buffer):
    clock = [T0 + 5]
    recorded = meter_for(buffer, clock).record("api_calls", 2.5, dim="user-7")
    assert recorded.record.key == (1, 1)
    assert (recorded.record.ts, recorded.record.dim, recorded.cap) == (T0 + 5, "user-7", None)
    assert buffer.pending() == [recorded.record]


@pytest.mark.parametrize(
    "features",
    [
        {},
        {"other": FeatureEntry(enabled=True)},
        {"api_calls": FeatureEntry(enabled=False)},
    ],
)
def test_meters_that_are_not_enabled_features_are_refused(buffer, features):
    meter = Meter(buffer, FakeEntitlements(features), clock=lambda: T0)
    with pytest.raises(NotEntitled):
        meter.record("api_calls", 1)
    assert buffer.stats().pending == 0


def test_block_refuses_beyond_the_cap_and_reopens_next_period(buffer):
    clock = [T0]
    meter = meter_for(buffer, clock, api_calls=capped(3, "block"))
    assert [meter.record("api_calls", 1).used for _ in range(3)] == [1, 2, 3]
    with pytest.raises(CapExceeded):
        meter.record("api_calls", 1)
    assert meter.record("api_calls", 0).used == 3  # zero fits
    clock[0] = T0 + DAY
    assert meter.record("api_calls", 3).used == 3
    stats = buffer.stats()
    assert (stats.pending, stats.cap_refused) == (5, 1)


def test_no_overage_policy_means_block(buffer):
    meter = meter_for(buffer, api_calls=capped(1, None))
    meter.record("api_calls", 1)
    with pytest.raises(CapExceeded):
        meter.record("api_calls", 0.5)


def test_allow_records_beyond_the_cap_and_says_so(buffer):
    meter = meter_for(buffer, api_calls=capped(2, "allow"))
    results = [meter.record("api_calls", 1) for _ in range(3)]
    assert [r.over_cap for r in results] == [False, False, True]
    assert buffer.stats().pending == 3
    assert meter.usage("api_calls").over == 0


def test_flag_records_and_counts_the_units_beyond_the_cap(buffer):
    meter = meter_for(buffer, api_calls=capped(10, "flag"))
    meter.record("api_calls", 8)
    assert meter.record("api_calls", 5).over_cap
    meter.record("api_calls", 1.5)
    usage = meter.usage("api_calls")
    assert (usage.used, usage.over) == (Decimal("14.5"), Decimal("4.5"))


def test_fractional_quantities_count_exactly(buffer):
    meter = meter_for(buffer, api_calls=capped(1, "block"))
    for _ in range(10):
        meter.record("api_calls", 0.1)
    assert meter.usage("api_calls").used == Decimal(1)
    with pytest.raises(CapExceeded):
        meter.record("api_calls", 0.1)


def test_monthly_caps_hold_across_days(buffer):
    clock = [T0]
    meter = meter_for(buffer, clock, api_calls=capped(2, "block", "month"))
    meter.record("api_calls", 2)
    clock[0] = T0 + 3 * DAY  # same month (January 2027)
    with pytest.raises(CapExceeded):
        meter.record("api_calls", 1)
    clock[0] = T0 + 20 * DAY  # February
    assert meter.record("api_calls", 1).used == 1


def test_a_clock_turned_back_never_reopens_a_spent_period(buffer):
    clock = [T0 + DAY]
    meter = meter_for(buffer, clock, api_calls=capped(1, "block"))
    meter.record("api_calls", 1)
    clock[0] = T0  # the day before
    with pytest.raises(CapExceeded):
        meter.record("api_calls", 1)


def test_the_signed_time_anchor_moves_the_period_forward(buffer):
    entitlements = FakeEntitlements({"api_calls": capped(1, "block")})
    meter = Meter(buffer, entitlements, clock=lambda: T0)
    meter.record("api_calls", 1)
    entitlements.anchor = T0 + DAY  # a newer manifest proves it is tomorrow
    assert meter.record("api_calls", 1).used == 1


def test_caps_hold_offline_across_a_restart(tmp_path):
    buffer = open_buffer(tmp_path)
    buffer.begin_epoch(1)
    meter_for(buffer, api_calls=capped(2, "block")).record("api_calls", 2)
    buffer.close()
    reopened = open_buffer(tmp_path)
    reopened.begin_epoch(2)
    with pytest.raises(CapExceeded):
        meter_for(reopened, api_calls=capped(2, "block")).record("api_calls", 1)


def test_open_meter_reads_the_agents_manifest_and_sees_new_ones(tmp_path):
    with pytest.raises(StateError, match="claimed"):
        open_meter(tmp_path)
    from device_agent.identity import IdentityStore

    IdentityStore(tmp_path).save(IDENTITY)
    IdentityStore(tmp_path).next_boot_epoch()
    now = issued(1)
    meter = open_meter(tmp_path, clock=lambda: now)
    with pytest.raises(NotEntitled):  # no manifest yet: safe defaults
        meter.record("api-calls", 1)
    # The agent (another TrustStore on the same directory) accepts a manifest.
    TrustStore.open(tmp_path, IDENTITY).accept_manifest(signed(1), now=now)
    assert meter.record("api-calls", 100).record.key == (1, 1)  # cap 100 per day, block
    with pytest.raises(CapExceeded):
        meter.record("api-calls", 1)
    with pytest.raises(NotEntitled):
        meter.record("legacy", 1)  # present but disabled
    meter.close()


def test_an_expired_lease_stops_metering(tmp_path):
    from device_agent.identity import IdentityStore

    IdentityStore(tmp_path).save(IDENTITY)
    TrustStore.open(tmp_path, IDENTITY).accept_manifest(signed(1), now=issued(1))
    clock = [issued(1)]
    with open_meter(tmp_path, clock=lambda: clock[0]) as meter:
        meter.record("camera.hdr", 1)
        clock[0] = issued(1) + 31 * DAY
        with pytest.raises(NotEntitled):
            meter.record("camera.hdr", 1)
