"""The analytics REST API: viewer access, tenant scoping, JSON shapes."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.hub.analytics.conftest import Shop, at
from tests.hub.conftest import Clock

API = "/api/v1/analytics"


def get(client: TestClient, shop: Shop, path: str, role: str = "viewer", **params: Any) -> Any:
    response = client.get(API + path, params=params, headers=shop.tenant.headers(role))
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture
def fleet(shop: Shop, other_shop: Shop, clock: Clock) -> dict[str, str]:
    """Two devices on a perpetual entitlement, one leaking after a revoke; noise elsewhere."""
    ent = shop.grant("perpetual", quantity=2)
    a, b = shop.device("A1", claimed=True), shop.device("B1", at(hours=1))
    shop.activate(ent, a, at(seconds=30))
    shop.activate(ent, b, at(hours=1, seconds=90))
    shop.ack(a, shop.issue(a, at(minutes=2)), at(minutes=3))
    idle = shop.grant("node_locked")
    gone = shop.grant("node_locked")
    shop.activate(gone, b, at(hours=2))
    shop.revoke(gone, at(hours=3))
    other_shop.grant("perpetual")
    other_shop.activate(other_shop.grant("trial", ends_at=at(days=3)), other_shop.device("Z"), at())
    clock.now = at(days=2)
    return {"ent": ent, "idle": idle, "a": a, "b": b}


def test_time_to_activate(client: TestClient, shop: Shop, fleet: dict[str, str]) -> None:
    body = get(client, shop, "/time-to-activate")
    assert body["at"].startswith("2030-01-03T12:00:00")
    assert "linear interpolation" in body["method"]
    [product] = body["products"]
    assert product["sku"] == "GW"
    assert product["seconds"] == {
        "count": 2, "min": 30.0, "p50": 60.0, "p90": 84.0, "max": 90.0, "mean": 60.0
    }  # fmt: skip
    later = get(client, shop, "/time-to-activate", since="2030-01-01T12:10:00")
    assert later["products"][0]["seconds"]["count"] == 1
    assert later["since"].startswith("2030-01-01T12:10:00")


def test_license_models(client: TestClient, shop: Shop, fleet: dict[str, str]) -> None:
    body = get(client, shop, "/license-models")
    models = {m["license_model"]: m for m in body["models"]}
    assert models["perpetual"] == {
        "license_model": "perpetual",
        "total": 1,
        "by_status": {"active": 1, "suspended": 0, "revoked": 0, "expired": 0},
        "devices_covered": 2,
    }
    assert models["node_locked"]["by_status"] == {
        "active": 1, "suspended": 0, "revoked": 1, "expired": 0
    }  # fmt: skip
    assert models["trial"]["total"] == 0  # the other tenant's trial is not counted
    assert body["devices_covered"] == 2


def test_unused_entitlements(client: TestClient, shop: Shop, fleet: dict[str, str]) -> None:
    body = get(client, shop, "/unused-entitlements", limit=10)
    assert body["total"] == 1 and body["limit"] == 10 and body["offset"] == 0
    [item] = body["items"]
    assert (item["entitlement_id"], item["days_unused"], item["reason"]) == (
        fleet["idle"], 2, "no_activation"
    )  # fmt: skip
    assert item["account_name"] == "Acme" and item["sku"] == "GW"
    response = client.get(
        API + "/unused-entitlements", params={"idle_days": -1}, headers=shop.tenant.headers()
    )
    assert response.status_code == 422


def test_leakage(client: TestClient, shop: Shop, fleet: dict[str, str]) -> None:
    body = get(client, shop, "/leakage")
    assert body["devices"] == 0 and body["findings"] == []
    assert body["manifests"]["acknowledged_current"] == 1
    shop.revoke(fleet["ent"], at(days=2))
    body = get(client, shop, "/leakage")
    assert body["devices"] == 1
    assert {f["feature"] for f in body["findings"]} == {"api.calls", "users", "vpn"}
    assert body["findings"][0]["device_id"] == fleet["a"]
    assert body["findings"][0]["serial"] == "A1"
    assert body["findings"][0]["manifest_seq"] == 1


def test_entitlement_history(
    client: TestClient, shop: Shop, other_shop: Shop, fleet: dict[str, str]
) -> None:
    body = get(client, shop, f"/entitlement-history/{shop.account_id}", limit=2)
    # 3 grants, 3 activations, 1 revoke.
    assert body["total"] == 7 and len(body["items"]) == 2
    assert body["items"][0]["action"] == "entitlement.revoke"
    response = client.get(
        f"{API}/entitlement-history/{shop.account_id}", headers=other_shop.tenant.headers()
    )
    assert response.status_code == 404


@pytest.mark.parametrize(
    "path", ["/time-to-activate", "/license-models", "/unused-entitlements", "/leakage"]
)
def test_requires_an_api_key(client: TestClient, path: str) -> None:
    assert client.get(API + path).status_code == 401


def test_other_tenant_sees_only_its_own(
    client: TestClient, other_shop: Shop, fleet: dict[str, str]
) -> None:
    body = get(client, other_shop, "/unused-entitlements")
    assert body["total"] == 1
    assert get(client, other_shop, "/license-models")["devices_covered"] == 1
    assert get(client, other_shop, "/leakage")["manifests"]["acknowledged_current"] == 0
