"""The usage skew window comes from the hub's settings."""

from __future__ import annotations

from pathlib import Path

from hub.settings import Settings
from hub.telemetry.plugin import usage_policy
from hub.telemetry.policy import UsagePolicy


def test_defaults_bill_a_week_offline_and_refuse_clocks_far_ahead(tmp_path: Path) -> None:
    policy = usage_policy(Settings(data_dir=tmp_path))
    assert policy == UsagePolicy(future_skew_seconds=300, max_age_seconds=90 * 86_400)


def test_environment_overrides_the_window(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("HUB_USAGE_FUTURE_SKEW_SECONDS", "5")
    monkeypatch.setenv("HUB_USAGE_MAX_AGE_SECONDS", "3600")
    policy = usage_policy(Settings(data_dir=tmp_path))
    assert (policy.future_skew_seconds, policy.max_age_seconds) == (5, 3600)
