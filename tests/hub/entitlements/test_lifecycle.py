"""Entitlement lifecycle per license model over the REST API, with history."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy.orm import Session, sessionmaker

from hub.entitlements.service import expire_due
from tests.hub.conftest import Clock
from tests.hub.entitlements.conftest import World


def _expire(factory: sessionmaker[Session], clock: Clock) -> frozenset[str]:
    with factory() as s:
        affected = expire_due(s, now=clock.now)
        s.commit()
    return affected


def test_subscription_suspend_resume_renew_expire(
    world: World, session_factory: sessionmaker[Session], clock: Clock
) -> None:
    ent = world.grant("subscription", quantity=2, ends_at=world.in_days(30), grace_seconds=3600)
    d1, d2 = world.device("S-1"), world.device("S-2")
    for device in (d1, d2):
        assert world.ok(world.activate(ent["id"], device), 201)["affected_device_ids"] == [device]
    assert world.features(d1)["vpn"]["enabled"] is True

    body = world.ok(world.post(f"/entitlements/{ent['id']}/suspend", {"reason": "unpaid"}))
    assert body["entitlement"]["status"] == "suspended"
    assert body["affected_device_ids"] == sorted([d1, d2])
    assert world.features(d1)["vpn"]["enabled"] is False
    body = world.ok(world.post(f"/entitlements/{ent['id']}/resume", {"reason": "paid"}))
    assert body["entitlement"]["status"] == "active"
    assert world.features(d2)["users"] == {
        "enabled": True,
        "limit": 5,
        "cap": None,
        "period": None,
        "overage": None,
    }

    clock.advance(days=30, minutes=59)  # in grace
    assert _expire(session_factory, clock) == frozenset()
    assert world.features(d1)["vpn"]["enabled"] is True
    clock.advance(minutes=1)  # exactly ends_at + grace
    assert world.features(d1)["vpn"]["enabled"] is False
    assert _expire(session_factory, clock) == {d1, d2}
    assert world.ok(world.get(f"/entitlements/{ent['id']}"))["status"] == "expired"

    body = world.ok(world.post(f"/entitlements/{ent['id']}/renew", {"term_seconds": 86400 * 30}))
    assert body["entitlement"]["status"] == "active"
    assert body["affected_device_ids"] == sorted([d1, d2])
    assert world.features(d1)["vpn"]["enabled"] is True

    actions = [
        e["action"] for e in world.ok(world.get(f"/accounts/{world.account_id}/history"))["items"]
    ]
    assert actions == [
        "entitlement.renew",
        "entitlement.expire",
        "entitlement.resume",
        "entitlement.suspend",
        "activation.create",
        "activation.create",
        "entitlement.create",
    ]


def test_history_has_actor_and_reason(world: World) -> None:
    ent = world.grant("perpetual", reason="PO-1234")
    device = world.device("H-1")
    world.ok(
        world.post(
            f"/entitlements/{ent['id']}/activations", {"device_id": device, "reason": "install"}
        ),
        201,
    )
    world.ok(world.post(f"/entitlements/{ent['id']}/revoke", {"reason": "fraud"}))
    items = world.ok(world.get(f"/devices/{device}/history"))["items"]
    operator_key = world.tenant.operator.split("_")[1]
    assert [(e["action"], e["reason"], e["actor"]) for e in items] == [
        ("activation.create", "install", f"key:{operator_key}"),
    ]
    items = world.ok(world.get(f"/entitlements/{ent['id']}/history"))["items"]
    assert [(e["action"], e["reason"]) for e in items] == [
        ("entitlement.revoke", "fraud"),
        ("activation.create", "install"),
        ("entitlement.create", "PO-1234"),
    ]
    assert all(e["actor"] == f"key:{operator_key}" for e in items)
    audit = world.ok(world.get("/audit", target_id=ent["id"]))["items"]
    assert {a["action"] for a in audit} >= {"entitlement.revoke", "activation.create"}
    assert world.features(device)["vpn"]["enabled"] is False


def test_revoke_is_terminal(world: World) -> None:
    ent = world.grant("perpetual")
    world.ok(world.post(f"/entitlements/{ent['id']}/revoke", {"reason": "x"}))
    for action in ("revoke", "suspend", "resume", "renew"):
        response = world.post(f"/entitlements/{ent['id']}/{action}", {})
        assert response.status_code in (409, 422), (action, response.text)
    assert world.activate(ent["id"], world.device("R-1")).json()["error"] == "invalid_state"


def test_node_locked_exactly_one_device(world: World) -> None:
    ent = world.grant("node_locked")
    d1, d2 = world.device("N-1"), world.device("N-2")
    world.ok(world.activate(ent["id"], d1), 201)
    refused = world.activate(ent["id"], d2)
    assert refused.status_code == 409 and refused.json()["error"] == "quantity_exceeded"
    assert world.activate(ent["id"], d1).json()["error"] == "already_activated"
    body = world.ok(
        world.client.delete(
            f"/api/v1/entitlements/{ent['id']}/activations/{d1}",
            headers=world.tenant.headers("operator"),
        )
    )
    assert body["affected_device_ids"] == [d1]
    world.ok(world.activate(ent["id"], d2), 201)
    assert world.features(d1)["vpn"]["enabled"] is False
    assert world.features(d2)["vpn"]["enabled"] is True


def test_trial_once_per_device_and_product_ever(world: World, clock: Clock) -> None:
    first = world.grant("trial", ends_at=world.in_days(14))
    device = world.device("T-1")
    world.ok(world.activate(first["id"], device), 201)
    world.ok(
        world.client.delete(
            f"/api/v1/entitlements/{first['id']}/activations/{device}",
            headers=world.tenant.headers("operator"),
        )
    )
    world.ok(world.post(f"/entitlements/{first['id']}/revoke", {"reason": "over"}))
    second = world.grant("trial", ends_at=world.in_days(14))
    refused = world.activate(second["id"], device)
    assert refused.status_code == 409 and refused.json()["error"] == "trial_used"
    world.ok(world.activate(second["id"], world.device("T-2")), 201)


def test_trial_term_rules(world: World) -> None:
    too_long = world.post(
        "/entitlements",
        {
            "account_id": world.account_id,
            "product_id": world.product_id,
            "license_model": "trial",
            "ends_at": world.in_days(31).isoformat(),
        },
    )
    assert too_long.status_code == 422 and too_long.json()["error"] == "invalid_term"
    ent = world.grant("trial", ends_at=world.in_days(20))
    renewed = world.post(f"/entitlements/{ent['id']}/renew", {"term_seconds": 86400 * 20})
    assert renewed.status_code == 422 and "30 days" in renewed.json()["message"]
    world.ok(world.post(f"/entitlements/{ent['id']}/renew", {"term_seconds": 86400 * 10}))


def test_metered_and_overrides(world: World) -> None:
    ent = world.grant(
        "metered", feature_overrides={"api.calls": {"cap": 50}, "users": {"limit": 9}}
    )
    extra = world.grant("metered", quantity=3)
    device = world.device("M-1")
    world.ok(world.activate(ent["id"], device), 201)
    world.ok(world.activate(extra["id"], device), 201)
    features = world.features(device)
    assert features["api.calls"] == {
        "enabled": True,
        "limit": None,
        "cap": 1050,
        "period": "month",
        "overage": "block",
    }
    assert features["users"]["limit"] == 9
    body = world.ok(
        world.client.patch(
            f"/api/v1/entitlements/{ent['id']}",
            json={"feature_overrides": {"api.calls": {"enabled": False}}, "reason": "downgrade"},
            headers=world.tenant.headers("operator"),
        )
    )
    assert body["affected_device_ids"] == [device]
    assert world.features(device)["api.calls"]["cap"] == 1000
    body = world.ok(
        world.client.patch(
            f"/api/v1/products/{world.product_id}/features/api.calls",
            json={"cap_per_period": 10, "overage": "flag"},
            headers=world.tenant.headers("operator"),
        )
    )
    assert body["cap_per_period"] == 10
    assert world.features(device)["api.calls"] == {
        "enabled": True,
        "limit": None,
        "cap": 10,
        "period": "month",
        "overage": "flag",
    }


def test_quantity_counts_devices(world: World) -> None:
    ent = world.grant("perpetual", quantity=2)
    devices = [world.device(f"Q-{i}") for i in range(3)]
    world.ok(world.activate(ent["id"], devices[0]), 201)
    world.ok(world.activate(ent["id"], devices[1]), 201)
    assert world.activate(ent["id"], devices[2]).json()["error"] == "quantity_exceeded"
    listed = world.ok(world.get(f"/entitlements/{ent['id']}/activations"))
    assert sorted(a["device_id"] for a in listed) == sorted(devices[:2])


def test_list_filters(world: World) -> None:
    world.grant("perpetual")
    sub = world.grant("subscription", ends_at=world.in_days(3))
    world.ok(world.post(f"/entitlements/{sub['id']}/suspend", {}))
    assert world.ok(world.get("/entitlements", status="suspended"))["total"] == 1
    assert world.ok(world.get("/entitlements", license_model="perpetual"))["total"] == 1
    assert world.ok(world.get("/entitlements", account_id=world.account_id))["total"] == 2
    assert world.ok(world.get("/entitlements", product_id="nope"))["total"] == 0
    assert world.get("/entitlements", status="bogus").status_code == 422


def test_future_start_and_device_view(world: World, clock: Clock) -> None:
    ent = world.grant("subscription", starts_at=world.in_days(1), ends_at=world.in_days(10))
    device = world.device("F-1")
    world.ok(world.activate(ent["id"], device), 201)
    view = world.ok(world.get(f"/devices/{device}/entitlements"))
    assert view["grants"][0]["in_force"] is False and view["features"]["vpn"]["enabled"] is False
    clock.advance(days=1)
    view = world.ok(world.get(f"/devices/{device}/entitlements"))
    assert view["grants"][0]["in_force"] is True
    assert clock.now - timedelta(days=1) < clock.now
