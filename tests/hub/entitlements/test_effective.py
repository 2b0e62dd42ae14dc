"""The effective-feature rules as a table (pure: no database)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from hub.entitlements.effective import (
    FeatureDef,
    Grant,
    effective_features,
    in_force,
    lease_not_after,
)
from protocols.manifest import FeatureEntry

T0 = datetime(2030, 1, 1, tzinfo=UTC)
END = T0 + timedelta(days=30)
KEYS = frozenset({"vpn", "users", "calls"})
CATALOG = {
    "vpn": FeatureDef("vpn", "flag"),
    "users": FeatureDef("users", "limit", default_limit=5),
    "calls": FeatureDef("calls", "metered", cap_per_period=100, period="month", overage="flag"),
}
OFF = FeatureEntry(enabled=False)
VPN = FeatureEntry(enabled=True)


def g(model: str = "subscription", **kw: Any) -> Grant:
    base: dict[str, Any] = {
        "license_model": model,
        "status": "active",
        "starts_at": T0,
        "ends_at": None if model in ("perpetual", "floating") else END,
        "features": KEYS,
    }
    return Grant(**(base | kw))


def users(limit: int) -> FeatureEntry:
    return FeatureEntry(enabled=True, limit=limit)


def calls(cap: int) -> FeatureEntry:
    return FeatureEntry(enabled=True, cap=cap, period="month", overage="flag")


ALL_OFF = {"calls": OFF, "users": OFF, "vpn": OFF}
DEFAULTS = {"calls": calls(100), "users": users(5), "vpn": VPN}
S = timedelta(seconds=1)

# (case id, grants, now, expected features)
CASES: list[tuple[str, list[Grant], datetime, dict[str, FeatureEntry]]] = [
    ("no grants", [], T0, ALL_OFF),
    ("one subscription in term", [g()], T0 + S, DEFAULTS),
    ("exactly at start", [g()], T0, DEFAULTS),
    ("before start", [g()], T0 - S, ALL_OFF),
    ("one second before end", [g()], END - S, DEFAULTS),
    ("exactly at end, no grace", [g()], END, ALL_OFF),
    ("inside grace", [g(grace_seconds=3600)], END + timedelta(minutes=59), DEFAULTS),
    ("exactly at end of grace", [g(grace_seconds=3600)], END + timedelta(hours=1), ALL_OFF),
    ("perpetual long after", [g("perpetual")], T0 + timedelta(days=9999), DEFAULTS),
    ("suspended", [g(status="suspended")], T0 + S, ALL_OFF),
    ("revoked", [g(status="revoked")], T0 + S, ALL_OFF),
    ("expired status inside term", [g(status="expired")], T0 + S, ALL_OFF),
    (
        "suspended next to active: active one counts",
        [g(status="suspended", overrides={"users": {"limit": 50}}), g()],
        T0 + S,
        DEFAULTS,
    ),
    (
        "overlap: limit is the max",
        [g(overrides={"users": {"limit": 20}}), g("perpetual", overrides={"users": {"limit": 8}})],
        T0 + S,
        {"calls": calls(200), "users": users(20), "vpn": VPN},
    ),
    (
        "overlap: caps add up",
        [g(overrides={"calls": {"cap": 30}}), g("metered"), g("perpetual")],
        T0 + S,
        {"calls": calls(230), "users": users(5), "vpn": VPN},
    ),
    (
        "overlap: enabled if any grant enables",
        [g(overrides={"vpn": {"enabled": False}}), g("perpetual")],
        T0 + S,
        {"calls": calls(200), "users": users(5), "vpn": VPN},
    ),
    (
        "override disables for its grant only",
        [g(overrides={"vpn": {"enabled": False}, "calls": {"enabled": False}})],
        T0 + S,
        {"calls": OFF, "users": users(5), "vpn": OFF},
    ),
    (
        "overlap: the ended grant drops out at its end",
        [g(overrides={"users": {"limit": 20}}), g("perpetual")],
        END,
        DEFAULTS,
    ),
    (
        "grant covering only some features",
        [g(features=frozenset({"vpn"}))],
        T0 + S,
        {"calls": OFF, "users": OFF, "vpn": VPN},
    ),
    ("floating without seat", [g("floating")], T0 + S, ALL_OFF),
    ("floating with seat", [g("floating", seat_held=True)], T0 + S, DEFAULTS),
    (
        "floating seat freed (snapshot after release)",
        [g("floating", seat_held=False), g("perpetual", features=frozenset({"vpn"}))],
        T0 + S,
        {"calls": OFF, "users": OFF, "vpn": VPN},
    ),
    (
        "floating seat past its heartbeat expiry",
        [g("floating", seat_held=True, seat_expires_at=T0 + timedelta(minutes=5))],
        T0 + timedelta(minutes=5),
        ALL_OFF,
    ),
    (
        "temporary rehost license before it lapses",
        [g("node_locked", ends_at=None, temporary_until=T0 + timedelta(days=2))],
        T0 + timedelta(days=2) - S,
        DEFAULTS,
    ),
    (
        "temporary rehost license exactly when it lapses",
        [g("node_locked", ends_at=None, temporary_until=T0 + timedelta(days=2))],
        T0 + timedelta(days=2),
        ALL_OFF,
    ),
    (
        "temporary license never outlives the term",
        [g(temporary_until=END + timedelta(days=5))],
        END,
        ALL_OFF,
    ),
    ("trial in term", [g("trial", ends_at=T0 + timedelta(days=14))], T0 + S, DEFAULTS),
    ("trial over", [g("trial", ends_at=T0 + timedelta(days=14))], T0 + timedelta(days=14), ALL_OFF),
]


@pytest.mark.parametrize(
    ("grants", "now", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_effective_features_table(
    grants: list[Grant], now: datetime, expected: dict[str, FeatureEntry]
) -> None:
    assert effective_features(grants, CATALOG, now=now) == expected


def test_order_of_grants_does_not_matter() -> None:
    grants = [
        g(overrides={"users": {"limit": 20}, "calls": {"cap": 7}}),
        g("perpetual"),
        g("metered"),
    ]
    forward = effective_features(grants, CATALOG, now=T0 + S)
    assert effective_features(grants[::-1], CATALOG, now=T0 + S) == forward


def test_only_catalogue_features_are_reported() -> None:
    result = effective_features([g(features=KEYS | {"ghost"})], CATALOG, now=T0 + S)
    assert set(result) == set(CATALOG)


LEASE = 7 * 86400
# (case id, grants, now, expected not_after)
LEASES: list[tuple[str, list[Grant], datetime, datetime]] = [
    ("no grants: full lease", [], T0, T0 + timedelta(seconds=LEASE)),
    ("perpetual: full lease", [g("perpetual")], T0, T0 + timedelta(seconds=LEASE)),
    ("ends before the lease", [g()], END - timedelta(days=1), END),
    ("grace counts", [g(grace_seconds=60)], END - timedelta(days=1), END + timedelta(seconds=60)),
    (
        "earliest of several",
        [g("perpetual"), g(ends_at=T0 + timedelta(days=2))],
        T0 + S,
        T0 + timedelta(days=2),
    ),
    (
        "temporary license bounds it",
        [g("node_locked", ends_at=None, temporary_until=T0 + timedelta(hours=3))],
        T0,
        T0 + timedelta(hours=3),
    ),
    (
        "seat expiry bounds it",
        [g("floating", seat_held=True, seat_expires_at=T0 + timedelta(minutes=5))],
        T0,
        T0 + timedelta(minutes=5),
    ),
    (
        "suspended grants do not bound it",
        [g(status="suspended")],
        END - S,
        END - S + timedelta(seconds=LEASE),
    ),
    (
        "a grant starting soon bounds it",
        [g(starts_at=T0 + timedelta(days=1))],
        T0,
        T0 + timedelta(days=1),
    ),
]


@pytest.mark.parametrize(
    ("grants", "now", "expected"), [c[1:] for c in LEASES], ids=[c[0] for c in LEASES]
)
def test_lease_not_after_table(grants: list[Grant], now: datetime, expected: datetime) -> None:
    assert lease_not_after(grants, now, LEASE) == expected


def test_lease_never_outlives_rights() -> None:
    grants = [g(grace_seconds=30), g("perpetual", features=frozenset({"vpn"}))]
    now = END - timedelta(hours=1)
    lease = lease_not_after(grants, now, LEASE)
    assert all(in_force(grant, lease - S) for grant in grants)
    assert effective_features(grants, CATALOG, now=lease)["users"] == OFF


def test_grant_is_frozen() -> None:
    grant = g()
    with pytest.raises(AttributeError):
        grant.status = "revoked"  # type: ignore[misc]
    assert replace(grant, status="revoked").status == "revoked"
