"""Bad input: clear typed errors, and nothing half-applied (state unchanged)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from tests.hub.conftest import Clock, TenantKeys, make_tenant
from tests.hub.entitlements.conftest import World, db_state, make_world


def _create(world: World, **fields: Any) -> Any:
    body = {"account_id": world.account_id, "product_id": world.product_id, **fields}
    return world.post("/entitlements", body)


@pytest.fixture
def busy(world: World) -> dict[str, str]:
    """Objects that refusals would touch if they half-applied."""
    node = world.grant("node_locked")
    floating = world.grant("floating", quantity=1)
    sub = world.grant("subscription", ends_at=world.in_days(10))
    trial = world.grant("trial", ends_at=world.in_days(5))
    d1, d2 = world.device("B-1"), world.device("B-2")
    for ent in (node, floating, trial):
        world.ok(world.activate(ent["id"], d1), 201)
    return {
        "node": node["id"],
        "floating": floating["id"],
        "sub": sub["id"],
        "trial": trial["id"],
        "d1": d1,
        "d2": d2,
    }


Refusal = Callable[[World, dict[str, str], TenantKeys], Any]
END = "2030-02-01T00:00:00+00:00"
START = "2030-01-05T00:00:00+00:00"
REFUSALS: list[tuple[str, Refusal, int, str]] = [
    (
        "unknown feature",
        lambda w, b, o: _create(
            w, license_model="perpetual", feature_overrides={"nope": {"enabled": True}}
        ),
        422,
        "unknown_feature",
    ),
    (
        "cap on a flag",
        lambda w, b, o: _create(
            w, license_model="perpetual", feature_overrides={"vpn": {"cap": 3}}
        ),
        422,
        "invalid_override",
    ),
    (
        "unknown override field",
        lambda w, b, o: _create(
            w, license_model="perpetual", feature_overrides={"vpn": {"colour": 3}}
        ),
        422,
        "validation_failed",
    ),
    (
        "negative quantity",
        lambda w, b, o: _create(w, license_model="perpetual", quantity=-1),
        422,
        "validation_failed",
    ),
    (
        "zero quantity",
        lambda w, b, o: _create(w, license_model="floating", quantity=0),
        422,
        "validation_failed",
    ),
    (
        "node-locked for 2",
        lambda w, b, o: _create(w, license_model="node_locked", quantity=2),
        422,
        "validation_failed",
    ),
    (
        "negative grace",
        lambda w, b, o: _create(w, license_model="perpetual", grace_seconds=-5),
        422,
        "validation_failed",
    ),
    (
        "inverted term",
        lambda w, b, o: _create(w, license_model="subscription", starts_at=END, ends_at=START),
        422,
        "validation_failed",
    ),
    (
        "empty term",
        lambda w, b, o: _create(w, license_model="subscription", starts_at=END, ends_at=END),
        422,
        "validation_failed",
    ),
    (
        "end before default start",
        lambda w, b, o: _create(
            w, license_model="subscription", ends_at="2029-01-01T00:00:00+00:00"
        ),
        422,
        "invalid_term",
    ),
    (
        "subscription without end",
        lambda w, b, o: _create(w, license_model="subscription"),
        422,
        "invalid_term",
    ),
    (
        "perpetual with end",
        lambda w, b, o: _create(w, license_model="perpetual", ends_at=END),
        422,
        "invalid_term",
    ),
    (
        "overlapping subscription",
        lambda w, b, o: _create(w, license_model="subscription", starts_at=START, ends_at=END),
        409,
        "overlapping_term",
    ),
    (
        "renew shortening",
        lambda w, b, o: w.post(
            f"/entitlements/{b['sub']}/renew", {"ends_at": "2030-01-02T00:00:00+00:00"}
        ),
        422,
        "invalid_term",
    ),
    (
        "renew perpetual-like",
        lambda w, b, o: w.post(f"/entitlements/{b['node']}/renew", {}),
        422,
        "invalid_term",
    ),
    (
        "second node-locked device",
        lambda w, b, o: w.activate(b["node"], b["d2"]),
        409,
        "quantity_exceeded",
    ),
    (
        "second trial on device",
        lambda w, b, o: w.activate(w.grant("trial", ends_at=w.in_days(60 - 31))["id"], b["d1"]),
        409,
        "trial_used",
    ),
    (
        "activate another tenant's entitlement",
        lambda w, b, o: w.client.post(
            f"/api/v1/entitlements/{b['node']}/activations",
            json={"device_id": "dev-x"},
            headers=o.headers("operator"),
        ),
        404,
        "not_found",
    ),
    (
        "activate another tenant's device",
        lambda w, b, o: w.activate(b["sub"], _foreign_device(w, o)),
        404,
        "not_found",
    ),
    (
        "rehost onto itself",
        lambda w, b, o: w.post(
            f"/entitlements/{b['node']}/rehost",
            {"from_device_id": b["d1"], "to_device_id": b["d1"]},
        ),
        422,
        "validation_failed",
    ),
    (
        "rehost from a device without it",
        lambda w, b, o: w.post(
            f"/entitlements/{b['node']}/rehost",
            {"from_device_id": b["d2"], "to_device_id": b["d1"]},
        ),
        404,
        "not_found",
    ),
    (
        "rehost trial to a device that had one",
        lambda w, b, o: _rehost_trial(w, b),
        409,
        "trial_used",
    ),
    ("suspend twice", lambda w, b, o: _suspend_twice(w, b), 409, "invalid_state"),
    (
        "confirm a permanent activation",
        lambda w, b, o: w.post(f"/entitlements/{b['node']}/activations/{b['d1']}/confirm", {}),
        409,
        "not_temporary",
    ),
    (
        "quantity below devices in use",
        lambda w, b, o: _lower_quantity(w),
        409,
        "quantity_in_use",
    ),
    (
        "node-locked quantity change",
        lambda w, b, o: w.client.patch(
            f"/api/v1/entitlements/{b['node']}",
            json={"quantity": 3},
            headers=w.tenant.headers("operator"),
        ),
        422,
        "invalid_quantity",
    ),
    (
        "feature field of another kind",
        lambda w, b, o: w.client.patch(
            f"/api/v1/products/{w.product_id}/features/vpn",
            json={"cap_per_period": 3},
            headers=w.tenant.headers("operator"),
        ),
        422,
        "invalid_feature",
    ),
]


def _foreign_device(world: World, other: TenantKeys) -> str:
    return make_world(world.client, other, world.clock, sku="OTHER").device("FOREIGN")


def _lower_quantity(world: World) -> Any:
    ent = world.grant("perpetual", quantity=3)
    for serial in ("LQ-1", "LQ-2"):
        world.ok(world.activate(ent["id"], world.device(serial)), 201)
    return world.client.patch(
        f"/api/v1/entitlements/{ent['id']}",
        json={"quantity": 1},
        headers=world.tenant.headers("operator"),
    )


def _rehost_trial(world: World, busy: dict[str, str]) -> Any:
    other = world.grant("trial", ends_at=world.in_days(3))
    world.ok(world.activate(other["id"], busy["d2"]), 201)
    return world.post(
        f"/entitlements/{busy['trial']}/rehost",
        {"from_device_id": busy["d1"], "to_device_id": busy["d2"]},
    )


def _suspend_twice(world: World, busy: dict[str, str]) -> Any:
    world.ok(world.post(f"/entitlements/{busy['sub']}/suspend", {}))
    return world.post(f"/entitlements/{busy['sub']}/suspend", {})


@pytest.mark.parametrize(
    ("call", "status", "code"), [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS]
)
def test_refused_and_nothing_changed(
    world: World,
    busy: dict[str, str],
    other_tenant: TenantKeys,
    session_factory: sessionmaker[Session],
    call: Refusal,
    status: int,
    code: str,
) -> None:
    # Refusals that set something up first snapshot after their own setup:
    # compare the state right before the refused request with right after.
    snapshots: list[dict[str, Any]] = []
    original = world.client.request

    def spy(method: str, url: Any, *args: Any, **kwargs: Any) -> Any:
        snapshots.append(db_state(session_factory))
        return original(method, url, *args, **kwargs)

    world.client.request = spy  # type: ignore[method-assign]
    try:
        response = call(world, busy, other_tenant)
    finally:
        world.client.request = original  # type: ignore[method-assign]
    assert response.status_code == status, response.text
    assert response.json()["error"] == code
    assert response.json()["message"]
    assert db_state(session_factory) == snapshots[-1]


def test_other_tenant_sees_nothing(
    client: TestClient, tenant: TenantKeys, session_factory: sessionmaker[Session], clock: Clock
) -> None:
    mine = make_world(client, tenant, clock)
    ent = mine.grant("perpetual")
    device = mine.device("ISO-1")
    mine.ok(mine.activate(ent["id"], device), 201)
    stranger = make_tenant(session_factory, clock.now)
    h = stranger.headers("admin")
    for path in (
        f"/accounts/{mine.account_id}",
        f"/accounts/{mine.account_id}/history",
        f"/products/{mine.product_id}/features",
        f"/products/{mine.product_id}/features/vpn",
        f"/entitlements/{ent['id']}",
        f"/entitlements/{ent['id']}/activations",
        f"/entitlements/{ent['id']}/history",
        f"/entitlements/{ent['id']}/seats",
        f"/devices/{device}/entitlements",
        f"/devices/{device}/history",
    ):
        assert client.get("/api/v1" + path, headers=h).status_code == 404, path
    for path in ("/accounts", "/entitlements"):
        assert client.get("/api/v1" + path, headers=h).json()["total"] == 0
