"""Trusted state on disk, and the application-facing Features API on top of it."""

import random

import pytest

import device_agent.trust_store as trust_store_module
from device_agent.errors import StateError
from device_agent.features import USAGE_FILE, Features, period_start
from device_agent.identity import Identity
from device_agent.trust import BadSignature, Expired, Rollback, TrustError
from device_agent.trust_store import TRUST_FILE, TrustStore
from protocols import cbor
from protocols.manifest import FeatureEntry
from tests.device_agent.test_trust import (
    ATTACKER,
    DAY,
    DEV,
    FEATURES,
    FIRMWARE,
    HUB,
    LEASE,
    NEXT,
    T0,
    flip_bit,
    issued,
    manifest,
    rotation,
    signed,
)

IDENTITY = Identity(
    device_id=DEV,
    mqtt_username=DEV,
    mqtt_password="pw",
    anchors=(HUB.anchor(), FIRMWARE.anchor("firmware")),
)


def open_store(tmp_path):
    return TrustStore.open(tmp_path, IDENTITY)


def test_fresh_store_starts_from_the_claim_time_anchors(tmp_path):
    store = open_store(tmp_path)
    assert store.state.anchors["manifest"] == (HUB.anchor(),)
    assert store.state.manifest is None and store.state.manifest_seq == 0
    assert not (tmp_path / TRUST_FILE).exists()


def test_accepted_state_is_persisted_before_returning(tmp_path):
    store = open_store(tmp_path)
    result = store.accept_manifest(signed(3), now=issued(3))
    assert result.status == "accepted"
    reopened = open_store(tmp_path)
    assert reopened.state == store.state
    assert reopened.state.manifest == manifest(3) and reopened.state.time_anchor == issued(3)
    assert (tmp_path / TRUST_FILE).stat().st_mode & 0o777 == 0o600


def test_refused_or_unchanged_input_writes_nothing(tmp_path):
    store = open_store(tmp_path)
    store.accept_manifest(signed(3), now=issued(3))
    before = (tmp_path / TRUST_FILE).read_bytes()
    mtime = (tmp_path / TRUST_FILE).stat().st_mtime_ns
    assert store.accept_manifest(signed(3), now=issued(3)).status == "unchanged"
    with pytest.raises(BadSignature):
        store.accept_manifest(signed(4, key=ATTACKER), now=issued(4))
    assert (tmp_path / TRUST_FILE).read_bytes() == before
    assert (tmp_path / TRUST_FILE).stat().st_mtime_ns == mtime


def test_older_sequences_replayed_across_restarts_are_refused(tmp_path):
    store = open_store(tmp_path)
    history = [signed(seq) for seq in range(1, 16)]
    for seq, data in enumerate(history, start=1):
        store.accept_manifest(data, now=issued(seq))
    replays = history[:-1]
    random.Random(7).shuffle(replays)
    for data in replays:
        store = open_store(tmp_path)  # an agent restart between every replay
        with pytest.raises(Rollback):
            store.accept_manifest(data, now=issued(15))
    assert open_store(tmp_path).state.manifest_seq == 15


def test_single_bit_mutants_leave_the_file_untouched(tmp_path):
    store = open_store(tmp_path)
    store.accept_manifest(signed(5), now=issued(5))
    before = (tmp_path / TRUST_FILE).read_bytes()
    data = signed(6)
    for bit in random.Random(3).sample(range(len(data) * 8), 100):
        with pytest.raises(TrustError):
            store.accept_manifest(flip_bit(data, bit), now=issued(6))
        assert (tmp_path / TRUST_FILE).read_bytes() == before
    assert open_store(tmp_path).state == store.state


def test_a_failed_write_changes_nothing(tmp_path, monkeypatch):
    store = open_store(tmp_path)
    state = store.state

    def broken(path, data, *, mode=0o600):
        raise StateError("disk full")

    monkeypatch.setattr(trust_store_module, "atomic_write", broken)
    with pytest.raises(StateError):
        store.accept_manifest(signed(1), now=issued(1))
    assert store.state is state


def test_rotation_is_replayed_from_the_claim_anchors_on_load(tmp_path):
    store = open_store(tmp_path)
    store.accept_manifest(signed(5), now=issued(5))
    store.accept_rotation(rotation(1, new=(NEXT,)), now=T0)
    assert store.state.manifest is None  # cached manifest signed by the retired key
    reopened = open_store(tmp_path)
    assert reopened.state == store.state
    assert reopened.state.anchors["manifest"] == (NEXT.anchor(),)
    with pytest.raises(BadSignature):
        reopened.accept_manifest(signed(6, key=HUB), now=issued(6))
    with pytest.raises(Rollback):
        reopened.accept_rotation(rotation(1, by=NEXT, new=(NEXT,)), now=T0)
    reopened.accept_manifest(signed(6, key=NEXT), now=issued(6))
    assert open_store(tmp_path).state.manifest == manifest(6)


def _tamper(tmp_path, **changes):
    doc = cbor.decode((tmp_path / TRUST_FILE).read_bytes())
    doc.update(changes)
    (tmp_path / TRUST_FILE).write_bytes(cbor.encode(doc))


@pytest.mark.parametrize(
    "changes",
    [
        {"manifest_seq": 1},
        {"manifest_seq": 9},
        {"device_id": "dev-00000000000000000002"},
        {"format": 2},
        {"time_anchor": 0},
        {"lapsed": 1},
        {"rotations": [rotation(1, by=ATTACKER, new=(ATTACKER,))]},
        {"rotations": ["x"]},
        {"manifest": signed(5, key=ATTACKER)},
        {"manifest": "x"},
    ],
)
def test_a_tampered_file_is_refused(tmp_path, changes):
    open_store(tmp_path).accept_manifest(signed(5), now=issued(5))
    _tamper(tmp_path, **changes)
    with pytest.raises(StateError):
        open_store(tmp_path)


@pytest.mark.parametrize("raw", [b"", b"\xff", cbor.encode([1, 2]), cbor.encode({"format": 1})])
def test_a_corrupt_file_is_refused(tmp_path, raw):
    (tmp_path / TRUST_FILE).write_bytes(raw)
    with pytest.raises(StateError):
        open_store(tmp_path)


def test_a_flipped_bit_in_the_stored_manifest_is_refused(tmp_path):
    store = open_store(tmp_path)
    store.accept_manifest(signed(5), now=issued(5))
    data = store.state.manifest_bytes
    _tamper(tmp_path, manifest=flip_bit(data, (len(data) - 5) * 8))
    with pytest.raises(StateError):
        open_store(tmp_path)


def test_a_lapse_is_persisted(tmp_path):
    store = open_store(tmp_path)
    store.accept_manifest(signed(5), now=issued(5))
    after = issued(5) + LEASE
    assert store.effective_features(now=after) == {}
    assert open_store(tmp_path).state.lapsed
    assert open_store(tmp_path).effective_features(now=after - 30 * DAY) == {}


# --- Features: the application-facing API ---------------------------------------------

METERED = {
    "hdr": FeatureEntry(enabled=True),
    "users": FeatureEntry(enabled=True, limit=10),
    "off": FeatureEntry(enabled=False, limit=3),
    "block": FeatureEntry(enabled=True, cap=10, period="day", overage="block"),
    "default": FeatureEntry(enabled=True, cap=10, period="day"),
    "allow": FeatureEntry(enabled=True, cap=10, period="day", overage="allow"),
    "flag": FeatureEntry(enabled=True, cap=10, period="day", overage="flag"),
    "monthly": FeatureEntry(enabled=True, cap=5, period="month", overage="block"),
}
# issued(1) is 2027-01-15T09:00Z; its UTC day starts 9 hours earlier
DAY_START = period_start("day", issued(1))


def features_for(tmp_path, entries=None, *, now=None, lease=LEASE, clock=None):
    store = open_store(tmp_path)
    if store.state.manifest is None:
        data = signed(1, features=METERED if entries is None else entries, lease=lease)
        store.accept_manifest(data, now=issued(1) if now is None else now)
    return Features(store, clock=clock or (lambda: issued(1)))


def test_flags_and_limits(tmp_path):
    features = features_for(tmp_path)
    assert features.is_enabled("hdr") and features.is_enabled("users", now=issued(1))
    assert not features.is_enabled("off") and not features.is_enabled("unknown")
    assert features.limit("users") == 10
    assert features.limit("hdr") is None  # enabled, no ceiling
    assert features.limit("off") == 0 and features.limit("unknown") == 0  # safe defaults
    assert not features.try_consume("off", 1, now=issued(1))
    assert features.try_consume("hdr", 1_000_000, now=issued(1))


def test_no_manifest_means_safe_defaults(tmp_path):
    features = Features(open_store(tmp_path), clock=lambda: T0)
    assert not features.is_enabled("hdr") and features.limit("users") == 0
    assert not features.try_consume("block", 1)


@pytest.mark.parametrize(
    ("key", "results", "used", "over"),
    [
        ("block", [True, True, False, False], 10, 0),
        ("default", [True, True, False, False], 10, 0),
        ("allow", [True, True, True, True], 16, 0),
        ("flag", [True, True, True, True], 16, 6),
    ],
)
def test_offline_cap_enforcement_per_policy(tmp_path, key, results, used, over):
    features = features_for(tmp_path)
    at = issued(1)
    assert [features.try_consume(key, n, now=at) for n in (6, 4, 1, 5)] == results
    usage = features.usage(key)
    assert (usage.used, usage.over, usage.period_start) == (used, over, DAY_START)


def test_usage_survives_a_restart(tmp_path):
    features = features_for(tmp_path)
    assert features.try_consume("block", 8, now=issued(1))
    restarted = features_for(tmp_path)
    assert restarted.usage("block").used == 8
    assert not restarted.try_consume("block", 3, now=issued(1))
    assert restarted.try_consume("block", 2, now=issued(1))
    assert (tmp_path / USAGE_FILE).exists()


def test_daily_and_monthly_periods_roll_over(tmp_path):
    features = features_for(tmp_path)
    at = issued(1)
    assert features.try_consume("block", 10, now=at)
    assert features.try_consume("monthly", 5, now=at)
    assert not features.try_consume("block", 1, now=DAY_START + DAY - 1)
    assert features.try_consume("block", 10, now=DAY_START + DAY)  # next UTC day
    assert features.usage("block").period_start == DAY_START + DAY
    assert not features.try_consume("monthly", 1, now=DAY_START + DAY)
    month_start = period_start("month", at)
    next_month = period_start("month", month_start + 32 * DAY)
    assert features.try_consume("monthly", 5, now=next_month)
    assert features.usage("monthly").period_start == next_month


def test_turning_the_clock_back_does_not_reset_usage(tmp_path):
    features = features_for(tmp_path)
    tomorrow = DAY_START + DAY
    assert features.try_consume("block", 10, now=tomorrow)
    # the signed time anchor (issued_at of seq 1) is still "today": the period never moves back
    assert not features.try_consume("block", 1, now=issued(1) - 2 * DAY)
    assert features.usage("block").period_start == tomorrow


def test_lease_expiry_disables_and_the_clock_turned_back_does_not_re_enable(tmp_path):
    features = features_for(tmp_path, lease=2 * DAY)
    not_after = issued(1) + 2 * DAY
    assert features.is_enabled("hdr", now=not_after - 1)
    assert not features.is_enabled("hdr", now=not_after)
    assert not features.try_consume("block", 1, now=not_after)
    assert features.limit("users", now=not_after) == 0
    assert not features.is_enabled("hdr", now=not_after - 30 * DAY)
    restarted = features_for(tmp_path, clock=lambda: not_after - 30 * DAY)
    assert not restarted.is_enabled("hdr")


def test_a_fresh_manifest_re_enables_after_a_lapse(tmp_path):
    features = features_for(tmp_path, lease=DAY)
    later = issued(1) + 3 * DAY
    assert not features.is_enabled("hdr", now=later)
    store = open_store(tmp_path)
    store.accept_manifest(signed(2, issued_at=later, features=METERED), now=later)
    assert Features(store).is_enabled("hdr", now=later)


def test_expired_manifest_is_never_accepted_by_the_store(tmp_path):
    with pytest.raises(Expired):
        open_store(tmp_path).accept_manifest(signed(1, lease=DAY), now=issued(1) + DAY)


def test_bad_units_and_corrupt_usage(tmp_path):
    features = features_for(tmp_path, FEATURES)
    for units in (-1, 1.5, True):
        with pytest.raises(ValueError, match="units"):
            features.try_consume("api-calls", units, now=issued(1))
    (tmp_path / USAGE_FILE).write_bytes(cbor.encode({"format": 1, "usage": {"x": [1]}}))
    with pytest.raises(StateError):
        Features(open_store(tmp_path))


def test_period_start_is_utc_and_clamped():
    assert period_start("day", 86_399) == 0 and period_start("day", 86_400) == 86_400
    assert period_start("month", 31 * 86_400) == 31 * 86_400  # 1970-02-01
    assert period_start("month", 2**64 - 1) == period_start("month", 253_402_300_799)
    assert period_start("day", -5) == 0
