"""Analytics queries on small fleets with a controlled clock, on every backend."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from hub.analytics import service
from hub.analytics.schemas import DurationStats, LicenseModelUsage
from protocols.manifest import FeatureEntry
from tests.hub.analytics.conftest import Shop, at

# ---------------------------------------------------------------- percentiles


def test_percentiles_interpolate_between_closest_ranks() -> None:
    values = [100.0, 10, 90, 20, 80, 30, 70, 40, 60, 50]  # any order
    assert service.percentile(values, 0.5) == 55
    assert service.percentile(values, 0.9) == pytest.approx(91)
    assert service.percentile(values, 0.0) == 10
    assert service.percentile(values, 1.0) == 100
    assert service.percentile([7.0], 0.9) == 7


@pytest.mark.parametrize(("values", "q"), [([], 0.5), ([1.0], -0.1), ([1.0], 1.5)])
def test_percentile_refuses_no_values_and_bad_quantiles(values: list[float], q: float) -> None:
    with pytest.raises(ValueError):
        service.percentile(values, q)


def test_duration_stats() -> None:
    assert service.duration_stats([]) == DurationStats(count=0)
    stats = service.duration_stats([60.0, 120, 180, 240, 3600])
    assert stats == DurationStats(count=5, min=60, p50=180, p90=2256, max=3600, mean=840)


# ---------------------------------------------------------------- time to activate


def _ttas(
    factory: sessionmaker[Session], shop: Shop, now: datetime, **kw: Any
) -> dict[str, DurationStats]:
    with factory() as s:
        report = service.time_to_activate(s, shop.tenant_id, now, **kw)
    return {p.sku: p.seconds for p in report.products}


def test_time_to_activate_per_product(
    session_factory: sessionmaker[Session], shop: Shop, other_shop: Shop
) -> None:
    ent = shop.grant("perpetual", quantity=10)
    delays = [60, 120, 180, 240, 3600]
    devices = [shop.device(f"D{i}", at(hours=i)) for i in range(len(delays))]
    for i, (device, delay) in enumerate(zip(devices, delays, strict=True)):
        shop.activate(ent, device, at(hours=i, seconds=delay))
    # Only the first activation of a product counts.
    shop.deactivate(ent, devices[0], at(hours=2))
    shop.activate(ent, devices[0], at(hours=3))
    # Another product, with a device first registered long before.
    other = shop.product("CAM")
    cam = shop.grant("perpetual", product_id=other)
    shop.activate(cam, devices[1], at(days=2, hours=1))
    shop.product("IDLE")
    # Another tenant's fleet never counts.
    foreign = other_shop.grant("perpetual")
    other_shop.activate(foreign, other_shop.device("X1"), at(seconds=1))

    stats = _ttas(session_factory, shop, at(days=10))
    assert stats["GW"] == DurationStats(count=5, min=60, p50=180, p90=2256, max=3600, mean=840)
    assert stats["CAM"] == DurationStats(
        count=1, min=172_800, p50=172_800, p90=172_800, max=172_800, mean=172_800
    )
    assert stats["IDLE"] == DurationStats(count=0)
    assert set(stats) == {"CAM", "GW", "IDLE"}


def test_time_to_activate_since_and_now(session_factory: sessionmaker[Session], shop: Shop) -> None:
    ent = shop.grant("perpetual", quantity=3)
    for i, delay in enumerate([100, 200, 300]):
        shop.activate(ent, shop.device(f"S{i}"), at(seconds=delay))
    assert _ttas(session_factory, shop, at(days=1), since=at(seconds=150))["GW"] == (
        DurationStats(count=2, min=200, p50=250, p90=290, max=300, mean=250)
    )
    # Activations after ``now`` are not there yet.
    assert _ttas(session_factory, shop, at(seconds=150))["GW"].count == 1


# ---------------------------------------------------------------- license models


def _models(
    factory: sessionmaker[Session], shop: Shop, now: datetime
) -> tuple[dict[str, LicenseModelUsage], int]:
    with factory() as s:
        report = service.license_models(s, shop.tenant_id, now)
    return {m.license_model: m for m in report.models}, report.devices_covered


def test_license_models_counts_and_coverage(
    session_factory: sessionmaker[Session], shop: Shop, other_shop: Shop
) -> None:
    d1, d2, d3, d4, d5, d6, d7 = (shop.device(f"L{i}") for i in range(1, 8))
    perpetual = shop.grant("perpetual", quantity=3)
    shop.activate(perpetual, d1, at(minutes=1))
    shop.activate(perpetual, d2, at(minutes=1))
    subscription = shop.grant("subscription", ends_at=at(days=10))
    shop.activate(subscription, d3, at(minutes=1))
    beta = shop.account("Beta")
    suspended = shop.grant("subscription", account_id=beta, ends_at=at(days=10))
    shop.activate(suspended, d4, at(minutes=1))
    shop.suspend(suspended, at(minutes=2))
    floating = shop.grant("floating", quantity=2)
    shop.activate(floating, d5, at(minutes=1))
    shop.activate(floating, d6, at(minutes=1))
    shop.checkout(d5, at(minutes=3))
    trial = shop.grant("trial", ends_at=at(days=7))
    shop.activate(trial, d7, at(minutes=1))
    shop.revoke(trial, at(minutes=2))
    locked = shop.grant("node_locked")
    shop.activate(locked, d1, at(minutes=1))
    other_shop.activate(other_shop.grant("metered"), other_shop.device("M1"), at(minutes=1))

    models, covered = _models(session_factory, shop, at(hours=1))
    assert list(models) == [
        "perpetual", "subscription", "trial", "node_locked", "floating", "metered"
    ]  # fmt: skip
    assert {m: (u.total, u.devices_covered) for m, u in models.items()} == {
        "perpetual": (1, 2),
        "subscription": (2, 1),
        "trial": (1, 0),
        "node_locked": (1, 1),
        "floating": (1, 1),
        "metered": (0, 0),
    }
    assert models["subscription"].by_status == {
        "active": 1, "suspended": 1, "revoked": 0, "expired": 0
    }  # fmt: skip
    assert models["trial"].by_status["revoked"] == 1
    assert covered == 4  # d1 (twice), d2, d3, d5
    # Past its end the subscription covers nobody, even before the expiry job runs.
    models, covered = _models(session_factory, shop, at(days=11))
    assert models["subscription"].devices_covered == 0 and covered == 3


# ---------------------------------------------------------------- unused entitlements


def _unused(
    factory: sessionmaker[Session], shop: Shop, now: datetime, **kw: int
) -> tuple[list[tuple[str, int, str]], int]:
    with factory() as s:
        items, total = service.unused_entitlements(s, shop.tenant_id, now, **kw)
    return [(i.entitlement_id, i.days_unused, i.reason) for i in items], total


def test_unused_entitlements(
    session_factory: sessionmaker[Session], shop: Shop, other_shop: Shop
) -> None:
    never = shop.grant("perpetual")
    dropped = shop.grant("perpetual")
    d1, d2, d3, d4 = (shop.device(f"U{i}") for i in range(1, 5))
    shop.activate(dropped, d1, at(days=1))
    shop.deactivate(dropped, d1, at(days=10))
    used = shop.grant("perpetual")
    shop.activate(used, d2, at(days=1))
    idle_seats = shop.grant("floating")
    shop.activate(idle_seats, d3, at(days=1))
    shop.checkout(d3, at(days=1))
    shop.release(d3, at(days=5))
    busy_seats = shop.grant("floating", product_id=shop.product("CAM"))
    shop.activate(busy_seats, d4, at(days=1))
    shop.checkout(d4, at(days=1), product_id=shop.product_id_of(busy_seats))
    shop.suspend(shop.grant("perpetual"), at(days=1))
    shop.grant("subscription", starts_at=at(days=100), ends_at=at(days=200))
    other_shop.grant("perpetual")

    now = at(days=40, hours=1)
    expected = [
        (never, 40, "no_activation"),
        (idle_seats, 35, "no_seat"),
        (dropped, 30, "no_activation"),
    ]
    assert _unused(session_factory, shop, now) == (expected, 3)
    assert _unused(session_factory, shop, now, limit=2, offset=1) == (expected[1:], 3)
    assert _unused(session_factory, shop, now, idle_days=36) == ([expected[0], expected[2]], 2)
    with session_factory() as s:
        item = service.unused_entitlements(s, shop.tenant_id, now)[0][1]
    assert (item.account_name, item.sku, item.license_model) == ("Acme", "GW", "floating")
    assert item.unused_since == at(days=5) and item.created_at == at()


# ---------------------------------------------------------------- leakage


def _leaks(
    factory: sessionmaker[Session], shop: Shop, now: datetime
) -> tuple[list[tuple[str, str, str]], dict[str, object]]:
    with factory() as s:
        report = service.leakage(s, shop.tenant_id, now)
    assert report.devices == len({f.device_id for f in report.findings})
    summary = report.manifests.model_dump()
    return [(f.device_id, f.feature, f.kind) for f in report.findings], summary


def _summary(current: int = 0, expired: int = 0, **unacked: int) -> dict[str, object]:
    waiting = {"pending": 0, "delivered": 0, "failed": 0, **unacked}
    return {
        "acknowledged_current": current,
        "acknowledged_expired": expired,
        "unacknowledged": waiting,
    }


def test_leakage_after_revoke_until_the_new_manifest_is_acknowledged(
    session_factory: sessionmaker[Session], shop: Shop
) -> None:
    device = shop.device("K1", claimed=True)
    ent = shop.grant("perpetual", feature_overrides={"users": {"limit": 12}})
    shop.activate(ent, device, at(minutes=1))
    seq = shop.issue(device, at(minutes=2))
    assert _leaks(session_factory, shop, at(minutes=3)) == ([], _summary(pending=1))
    shop.ack(device, seq, at(minutes=3))
    assert _leaks(session_factory, shop, at(minutes=4)) == ([], _summary(current=1))

    shop.revoke(ent, at(minutes=5))  # committed; the re-issue has not happened yet
    leaks, summary = _leaks(session_factory, shop, at(minutes=6))
    assert summary == _summary(current=1)
    assert leaks == [(device, key, "not_entitled") for key in ("api.calls", "users", "vpn")]
    with session_factory() as s:
        finding = service.leakage(s, shop.tenant_id, at(minutes=6)).findings[1]
    assert finding.held.model_dump() == {"enabled": True, "limit": 12, "cap": None}
    assert finding.entitled.model_dump() == {"enabled": False, "limit": None, "cap": None}
    assert (finding.manifest_seq, finding.not_after) == (seq, at(days=3, minutes=2))
    assert finding.acknowledged_at == at(minutes=3)

    seq = shop.issue(device, at(minutes=7))  # the new manifest withdraws everything
    # Until the device acknowledges it, it still runs the old one: still a leak.
    still = [(device, key, "not_entitled") for key in ("api.calls", "users", "vpn")]
    assert _leaks(session_factory, shop, at(minutes=8)) == (still, _summary(current=1, pending=1))
    shop.delivered(device, at(minutes=8))
    assert _leaks(session_factory, shop, at(minutes=9)) == (still, _summary(current=1, delivered=1))
    shop.ack(device, seq, at(minutes=9))
    assert _leaks(session_factory, shop, at(minutes=10)) == ([], _summary(current=1))


def test_leakage_of_limits_and_caps(session_factory: sessionmaker[Session], shop: Shop) -> None:
    device = shop.device("K2", claimed=True)
    ent = shop.grant(
        "perpetual", feature_overrides={"users": {"limit": 12}, "api.calls": {"cap": 5000}}
    )
    shop.activate(ent, device, at(minutes=1))
    shop.ack(device, shop.issue(device, at(minutes=2)), at(minutes=3))
    shop.override(ent, at(minutes=4), {"users": {"limit": 3}})
    leaks, summary = _leaks(session_factory, shop, at(minutes=5))
    assert leaks == [(device, "api.calls", "cap"), (device, "users", "limit")]
    assert summary == _summary(current=1)


def test_an_expired_or_rejected_manifest_is_not_a_leak(
    session_factory: sessionmaker[Session], shop: Shop, other_shop: Shop
) -> None:
    lapsing, rejecting = shop.device("K3", claimed=True), shop.device("K4", claimed=True)
    ent = shop.grant("perpetual", quantity=2)
    for device in (lapsing, rejecting):
        shop.activate(ent, device, at(minutes=1))
    shop.ack(lapsing, shop.issue(lapsing, at(minutes=2)), at(minutes=3))
    shop.issue(rejecting, at(minutes=2))
    shop.ack(rejecting, 0, at(minutes=3), status="rejected")
    shop.revoke(ent, at(minutes=4))
    foreign = other_shop.device("K9", claimed=True)
    other_ent = other_shop.grant("perpetual")
    other_shop.activate(other_ent, foreign, at(minutes=1))
    other_shop.ack(foreign, other_shop.issue(foreign, at(minutes=2)), at(minutes=3))
    other_shop.revoke(other_ent, at(minutes=4))

    assert _leaks(session_factory, shop, at(days=1))[1] == _summary(current=1, failed=1)
    assert len(_leaks(session_factory, shop, at(days=1))[0]) == 3
    # The lease runs out: the device has fallen back to its safe defaults.
    assert _leaks(session_factory, shop, at(days=3, minutes=2)) == (
        [], _summary(expired=1, failed=1)
    )  # fmt: skip
    assert len(_leaks(session_factory, other_shop, at(days=1))[0]) == 3


@pytest.mark.parametrize(
    ("held", "entitled", "kind"),
    [
        (FeatureEntry(enabled=False), None, None),
        (FeatureEntry(enabled=True), None, "not_entitled"),
        (FeatureEntry(enabled=True), FeatureEntry(enabled=False), "not_entitled"),
        (FeatureEntry(enabled=True, limit=5), FeatureEntry(enabled=True, limit=5), None),
        (FeatureEntry(enabled=True, limit=6), FeatureEntry(enabled=True, limit=5), "limit"),
        (FeatureEntry(enabled=True), FeatureEntry(enabled=True, limit=5), "limit"),
        (FeatureEntry(enabled=True, limit=9), FeatureEntry(enabled=True), None),
        (FeatureEntry(enabled=True, cap=10), FeatureEntry(enabled=True, cap=9), "cap"),
        (FeatureEntry(enabled=True, cap=8), FeatureEntry(enabled=True, cap=9), None),
    ],
)
def test_leak_kind(held: FeatureEntry, entitled: FeatureEntry | None, kind: str | None) -> None:
    assert service.leak_kind(held, entitled) == kind
