"""The invariant checker on hand-made runs: each injected fault is reported, a clean run is not."""

from __future__ import annotations

from dataclasses import replace

import pytest

from simulator.checker import TICK_TOLERANCE, HubDevice, HubState, RunFacts, check
from simulator.fwcheck import HubRollout
from simulator.recorder import DeviceRecord, FeatureSeen, Recorder


def device(serial: str, device_id: str, *, seq: int = 3, group: str = "g") -> DeviceRecord:
    record = DeviceRecord(serial=serial, group=group, device_id=device_id, manifest_seq=seq)
    for n in range(1, 6):
        record.usage_sent[(1, n)] = ("api_calls", 1, 1_800_000_000)
        record.usage_acks[(1, n)] = "stored"
    return record


def clean_run() -> tuple[dict[str, DeviceRecord], HubState]:
    records = {"A": device("A", "dev-a"), "B": device("B", "dev-b")}
    hub = HubState(
        devices={
            "dev-a": HubDevice("dev-a", "A", "claimed", 3),
            "dev-b": HubDevice("dev-b", "B", "claimed", 3),
        },
        usage_records={
            "dev-a": [(1, n) for n in range(1, 6)],
            "dev-b": [(1, n) for n in range(1, 6)],
        },
        rollouts=[],
    )
    return records, hub


FACTS = RunFacts(
    lease_seconds=120, metering_available=True, firmware_available=True, rollout_started=True
)


def kinds(result) -> list[str]:
    return sorted(v.kind for v in result.violations)


def test_a_clean_run_passes_with_exact_figures() -> None:
    records, hub = clean_run()
    result = check(records, hub, FACTS)
    assert result.ok, result.violations
    assert (result.usage.sent, result.usage.acknowledged, result.usage.billed) == (10, 10, 10)
    assert (result.usage.lost, result.usage.duplicated, result.usage.unexpected) == (0, 0, 0)
    assert result.converged == 2
    assert result.skipped == []


def test_injected_loss_is_reported() -> None:
    records, hub = clean_run()
    hub.usage_records["dev-a"].remove((1, 3))  # type: ignore[union-attr]
    result = check(records, hub, FACTS)
    assert kinds(result) == ["usage_lost"]
    assert result.usage.lost == 1
    assert result.violations[0].device == "dev-a"
    assert "1/3" in result.violations[0].detail


def test_injected_duplicate_is_reported() -> None:
    records, hub = clean_run()
    hub.usage_records["dev-b"].append((1, 2))  # type: ignore[union-attr]
    result = check(records, hub, FACTS)
    assert kinds(result) == ["usage_duplicated"]
    assert result.usage.duplicated == 1
    assert result.usage.billed == 11


def test_a_record_the_device_never_sent_is_unexpected() -> None:
    records, hub = clean_run()
    hub.usage_records["dev-b"].append((999_999, 1))  # type: ignore[union-attr]
    result = check(records, hub, FACTS)
    assert kinds(result) == ["usage_unexpected"]
    assert result.usage.unexpected == 1


def test_usage_billed_to_a_device_outside_the_run_is_unexpected() -> None:
    records, hub = clean_run()
    usage = dict(hub.usage_records or {})
    usage["dev-stranger"] = [(1, 1)]
    result = check(records, HubState(hub.devices, usage, [], True), FACTS)
    assert kinds(result) == ["usage_unexpected"]


def test_stale_manifest_is_reported() -> None:
    records, hub = clean_run()
    records["B"].manifest_seq = 2
    result = check(records, hub, FACTS)
    assert kinds(result) == ["stale_manifest"]
    assert result.converged == 1
    assert "seq 2" in result.violations[0].detail and "latest is 3" in result.violations[0].detail


def test_unacknowledged_records_are_not_lost_but_counted() -> None:
    records, hub = clean_run()
    records["A"].usage_sent[(1, 6)] = ("api_calls", 1, 1_800_000_000)
    result = check(records, hub, FACTS)
    assert result.ok
    assert result.usage.unacknowledged == 1


@pytest.mark.parametrize("code", ["quarantined", "rejected"])
def test_records_answered_without_billing_are_not_expected_in_the_bill(code: str) -> None:
    records, hub = clean_run()
    records["A"].usage_acks[(1, 5)] = code
    hub.usage_records["dev-a"].remove((1, 5))  # type: ignore[union-attr]
    assert check(records, hub, FACTS).ok


def test_a_never_claimed_device_and_a_dead_hub_are_violations() -> None:
    records, hub = clean_run()
    records["C"] = DeviceRecord(serial="C", group="g")
    result = check(records, HubState(hub.devices, hub.usage_records, [], alive=False), FACTS)
    assert kinds(result) == ["hub_down", "not_claimed"]


def test_feature_past_lease_respects_the_declared_clock_lag() -> None:
    records, hub = clean_run()
    slow = records["A"]
    slow.clock_skew = -90
    slow.features["premium"] = FeatureSeen(last_enabled_at=100.0, worst_overrun=80.0, worst_seq=3)
    assert check(records, hub, FACTS).ok  # within 90 s of clock lag
    slow.features["premium"].worst_overrun = 90 + TICK_TOLERANCE + 1
    result = check(records, hub, FACTS)
    assert kinds(result) == ["feature_past_lease"]


def test_feature_enabled_without_a_manifest_is_a_violation() -> None:
    records, hub = clean_run()
    recorder = Recorder()
    recorder.feature_check(
        records["A"], feature="premium", enabled=True, real_now=5.0, not_after=None, seq=0
    )
    assert kinds(check(records, hub, FACTS)) == ["feature_past_lease"]


def test_feature_after_revocation_plus_lease_is_a_violation() -> None:
    records, hub = clean_run()
    records["A"].features["premium"] = FeatureSeen(last_enabled_at=1000.0, worst_overrun=-5.0)
    facts = RunFacts(
        lease_seconds=120,
        revoked_at={"g": 1000.0 - 130},
        metering_available=True,
        firmware_available=True,
    )
    assert kinds(check(records, hub, facts)) == ["feature_after_revocation"]
    facts = RunFacts(
        lease_seconds=120,
        revoked_at={"g": 1000.0 - 100},
        metering_available=True,
        firmware_available=True,
    )
    assert check(records, hub, facts).ok


def test_traffic_from_outside_the_own_subtree_is_a_breach() -> None:
    records, hub = clean_run()
    recorder = Recorder()
    recorder.devices = records
    recorder.received(records["A"], "d/dev-b/down/state", b"\xa0")
    recorder.plant("B", b"forged")
    recorder.received(records["A"], "d/dev-a/down/manifest", b"forged")
    recorder.received(records["B"], "d/dev-b/down/manifest", b"forged")  # its own plant: fine
    result = check(records, hub, FACTS)
    assert kinds(result) == ["isolation_breach"]
    assert "2 message(s)" in result.violations[0].detail


def test_unsettled_rollouts_are_violations_and_missing_apis_are_skipped() -> None:
    records, hub = clean_run()
    busy = HubState(hub.devices, hub.usage_records, [HubRollout("r1", "p1", "running")])
    assert kinds(check(records, busy, FACTS)) == ["rollout_unsettled"]
    bare = HubState(hub.devices, None, None)
    result = check(records, bare, RunFacts(lease_seconds=120))
    assert result.ok
    assert len(result.skipped) == 4  # usage API, metering, rollouts, firmware: never "passed"


def test_only_a_manifest_issued_after_the_device_stopped_excuses_a_stale_one() -> None:
    records, hub = clean_run()
    records["B"].stopped_at = 1_000.0
    renewed = HubDevice("dev-b", "B", "claimed", 4, manifest_issued_at=1_000.5)
    later = HubState({**hub.devices, "dev-b": renewed}, hub.usage_records, [])
    settled = replace(FACTS, settled_seqs={"dev-a": 3, "dev-b": 3})
    result = check(records, later, settled)
    assert result.ok and result.converged == 2
    # issued while the device was still connected (after the settle check, before its
    # stop): it should have reached it
    early = HubDevice("dev-b", "B", "claimed", 4, manifest_issued_at=999.0)
    stale = HubState({**hub.devices, "dev-b": early}, hub.usage_records, [])
    assert kinds(check(records, stale, settled)) == ["stale_manifest"]
    # no successful settle check, or no stop recorded: nothing is excused
    assert kinds(check(records, later, replace(settled, settled_seqs={}))) == ["stale_manifest"]
    records["B"].stopped_at = None
    assert kinds(check(records, later, settled)) == ["stale_manifest"]


def test_a_device_ahead_of_the_hub_or_behind_the_settle_check_is_never_excused() -> None:
    records, hub = clean_run()
    records["B"].stopped_at = 1_000.0
    renewed = HubDevice("dev-b", "B", "claimed", 5, manifest_issued_at=1_001.0)
    later = HubState({**hub.devices, "dev-b": renewed}, hub.usage_records, [])
    settled = replace(FACTS, settled_seqs={"dev-a": 3, "dev-b": 3})
    records["B"].manifest_seq = 99  # ahead of the hub's 5
    result = check(records, later, settled)
    assert kinds(result) == ["stale_manifest"]
    assert "seq 99" in result.violations[0].detail
    records["B"].manifest_seq = 2  # behind what the settle check saw it converge on
    assert kinds(check(records, later, settled)) == ["stale_manifest"]
    records["B"].manifest_seq = 3
    assert check(records, later, settled).ok
    # the hub's latest is not newer than what settled: an equal or older number is stale
    same = HubDevice("dev-b", "B", "claimed", 2, manifest_issued_at=1_001.0)
    assert kinds(check(records, HubState({**hub.devices, "dev-b": same}), settled)) == [
        "stale_manifest"
    ]


def test_a_hub_that_would_not_stop_is_a_violation() -> None:
    records, hub = clean_run()
    facts = replace(FACTS, hub_problems=("broker_restart @50s: hub ignored SIGTERM: killed",))
    result = check(records, hub, facts)
    assert kinds(result) == ["hub_stop_hung"]
    assert "SIGTERM" in result.violations[0].detail
