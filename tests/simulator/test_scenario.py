"""Scenario files: the shipped ones load, every bad value is refused naming its key."""

from __future__ import annotations

from pathlib import Path

import pytest

from simulator import scenario
from simulator.environment import hub_env
from simulator.scenario import ScenarioError, parse

HERE = Path(__file__).parent


def test_shipped_scenarios_load_and_chaos_covers_every_fault_and_attack() -> None:
    assert {"smoke", "chaos", "scale"} <= set(scenario.shipped())
    smoke = scenario.load("smoke")
    assert smoke.faults == () and not any(g.malicious for g in smoke.groups)
    chaos = scenario.load("chaos")
    assert {f.kind for f in chaos.faults} == set(scenario.FAULT_KINDS)
    assert {m for g in chaos.groups for m in g.malicious} == set(scenario.MALICIOUS)
    assert {g.connectivity for g in chaos.groups} == set(scenario.CONNECTIVITY)
    assert {g.usage for g in chaos.groups} >= {"steady", "bursty", "daily"}
    assert any(g.clock_skew_seconds for g in chaos.groups)
    assert any(g.firmware_failure for g in chaos.groups)
    stalled = {f.group for f in chaos.faults if f.kind == "network_stall" and f.group}
    assert all(chaos.group(name).through_proxy for name in stalled)


def test_test_scenarios_load() -> None:
    assert scenario.load(str(HERE / "faults.toml")).devices == 20
    assert scenario.load(str(HERE / "broken_clock.toml")).groups[0].clock_skew_seconds == 120


def test_group_sizes_share_by_weight_and_add_up() -> None:
    chosen = scenario.load("chaos").with_overrides(devices=160)  # weights add up to 16
    sizes = chosen.group_sizes()
    assert sum(sizes.values()) == 160
    assert sizes["steady"] == 2 * sizes["bursty"]
    assert min(sizes.values()) >= 1
    tiny = chosen.with_overrides(devices=len(chosen.groups))
    assert set(tiny.group_sizes().values()) == {1}
    with pytest.raises(ScenarioError, match="cannot fill"):
        chosen.with_overrides(devices=3).group_sizes()


def test_overrides_drop_faults_after_a_shorter_duration() -> None:
    short = scenario.load("chaos").with_overrides(duration=30)
    assert short.duration_seconds == 30
    assert all(f.at < 30 for f in short.faults) and short.faults
    with pytest.raises(ScenarioError):
        scenario.load("chaos").with_overrides(devices=0)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"devcies": 3}, r"unknown key\(s\) \['devcies'\]"),
        ({"devices": "10"}, "devices must be an integer"),
        ({"groups": [{"name": "a", "usage": "sometimes"}]}, "groups\\[0\\].usage must be one of"),
        ({"groups": [{"name": "a/b"}]}, "groups\\[0\\].name"),
        ({"groups": [{"name": "a"}, {"name": "a"}]}, "unique"),
        ({"groups": [{"name": "a", "malicious": ["nice"]}]}, "unknown \\['nice'\\]"),
        ({"faults": [{"kind": "hub_kill"}]}, "faults\\[0\\].at is required"),
        ({"faults": [{"at": 1, "kind": "meteor"}]}, "faults\\[0\\].kind must be one of"),
        ({"faults": [{"at": 1, "kind": "network_stall", "group": "x"}]}, "no group named 'x'"),
        ({"faults": [{"at": 1, "kind": "hub_kill", "group": "devices"}]}, "network_stall only"),
        ({"actions": [{"at": 1, "kind": "revoke_group"}]}, "revoke_group needs one of"),
        ({"hub": {"manifest_lease_seconds": 5}}, "manifest_lease_seconds must be an integer"),
        (
            {
                "groups": [
                    {
                        "name": "a",
                        "connectivity": "offline",
                        "offline_seconds": 50,
                        "offline_every_seconds": 40,
                    }
                ]
            },
            "below offline_every_seconds",
        ),
    ],
)
def test_bad_values_are_refused_naming_the_key(raw: dict[str, object], message: str) -> None:
    with pytest.raises(ScenarioError, match=message):
        parse(raw)


def test_unknown_names_and_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="no scenario named"):
        scenario.load("no-such-scenario")
    bad = tmp_path / "bad.toml"
    bad.write_text("name = [")
    with pytest.raises(ScenarioError, match="not valid TOML"):
        scenario.load(str(bad))
    with pytest.raises(ScenarioError, match="cannot read"):
        scenario.load(str(tmp_path / "missing.toml"))


def test_the_rollout_table_is_validated_and_defaults_are_sensible() -> None:
    plan = scenario.parse({"name": "r", "rollout": {"waves": [10, 90], "image_kib": 8}}).rollout
    assert plan is not None
    assert (plan.waves, plan.image_kib, plan.gated, plan.failure_action) == (
        (10, 90),
        8,
        True,
        "pause",
    )
    assert scenario.parse({"name": "r"}).rollout is None  # no table: no rollout
    assert scenario.load("scale").rollout is None
    for shipped in ("smoke", "chaos"):
        assert scenario.load(shipped).rollout is not None
        assert any(not g.firmware_entitled for g in scenario.load(shipped).groups)
    bad = [
        ({"rollout": {"waves": [60, 50]}}, "at most 100"),
        ({"rollout": {"waves": []}}, "at most 100"),
        ({"rollout": {"wave": [10]}}, "unknown key"),
        ({"rollout": {"failure_action": "ignore"}}, "failure_action"),
        ({"rollout": {"device_timeout_seconds": 5}}, "device_timeout_seconds"),
        ({"rollout": {}, "firmware": False}, "needs firmware"),
        ({"groups": [{"name": "g", "firmware_entitled": "no"}]}, "firmware_entitled"),
    ]
    for raw, message in bad:
        with pytest.raises(ScenarioError, match=message):
            scenario.parse({"name": "r", **raw})


def test_a_shortened_run_still_rolls_out() -> None:
    chosen = scenario.load("chaos").with_overrides(duration=5)
    assert chosen.rollout is not None and chosen.rollout.at == 0.0
    kept = scenario.load("smoke").with_overrides(duration=10)
    assert kept.rollout is not None and kept.rollout.at == 3.0


def test_billing_grace_is_passed_to_the_hub_only_when_set() -> None:
    assert "HUB_BILLING_GRACE_SECONDS" not in hub_env(scenario.HubOptions())
    options = scenario.parse({"name": "b", "hub": {"billing_grace_seconds": 15}}).hub
    assert hub_env(options)["HUB_BILLING_GRACE_SECONDS"] == "15"
