"""Roles (viewer reads, operator writes) and tenant isolation on every endpoint."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.hub.conftest import TenantKeys
from tests.hub.entitlements.conftest import World

RANK = {"viewer": 0, "operator": 1, "admin": 2}


def endpoints(w: World) -> list[tuple[str, str, Any, str]]:
    """(method, path, body, minimum role) for every entitlement route."""
    ent = w.grant("subscription", ends_at=w.in_days(30))
    device = w.device("ACC-1")
    spare = w.device("ACC-2")
    w.ok(w.activate(ent["id"], device), 201)
    e, p, a = ent["id"], w.product_id, w.account_id
    return [
        ("GET", "/accounts", None, "viewer"),
        ("GET", f"/accounts/{a}", None, "viewer"),
        ("GET", f"/accounts/{a}/history", None, "viewer"),
        ("POST", "/accounts", {"name": "new"}, "operator"),
        ("PATCH", f"/accounts/{a}", {"external_ref": "crm-1"}, "operator"),
        ("GET", f"/products/{p}/features", None, "viewer"),
        ("GET", f"/products/{p}/features/vpn", None, "viewer"),
        ("POST", f"/products/{p}/features", {"key": "x1", "kind": "flag"}, "operator"),
        ("PATCH", f"/products/{p}/features/users", {"default_limit": 7}, "operator"),
        ("GET", "/entitlements", None, "viewer"),
        ("GET", f"/entitlements/{e}", None, "viewer"),
        ("GET", f"/entitlements/{e}/history", None, "viewer"),
        ("GET", f"/entitlements/{e}/seats", None, "viewer"),
        ("GET", f"/entitlements/{e}/activations", None, "viewer"),
        (
            "POST",
            "/entitlements",
            {"account_id": a, "product_id": p, "license_model": "perpetual"},
            "operator",
        ),
        ("PATCH", f"/entitlements/{e}", {"grace_seconds": 60}, "operator"),
        ("POST", f"/entitlements/{e}/suspend", {}, "operator"),
        ("POST", f"/entitlements/{e}/resume", {}, "operator"),
        ("POST", f"/entitlements/{e}/renew", {}, "operator"),
        (
            "POST",
            f"/entitlements/{e}/rehost",
            {"from_device_id": device, "to_device_id": spare},
            "operator",
        ),
        ("POST", f"/entitlements/{e}/activations/{spare}/confirm", {}, "operator"),
        ("DELETE", f"/entitlements/{e}/activations/{spare}", None, "operator"),
        ("POST", f"/entitlements/{e}/activations", {"device_id": device}, "operator"),
        ("POST", f"/entitlements/{e}/revoke", {}, "operator"),
        ("GET", f"/devices/{device}/entitlements", None, "viewer"),
        ("GET", f"/devices/{device}/history", None, "viewer"),
    ]


def _send(
    client: TestClient, tenant: TenantKeys, role: str, method: str, path: str, body: Any
) -> Any:
    return client.request(method, "/api/v1" + path, json=body, headers=tenant.headers(role))


@pytest.mark.parametrize("role", ["viewer", "operator"])
def test_role_matrix(world: World, role: str) -> None:
    for method, path, body, minimum in endpoints(world):
        response = _send(world.client, world.tenant, role, method, path, body)
        if RANK[role] < RANK[minimum]:
            assert response.status_code == 403, (method, path, response.text)
        else:
            # Allowed; lifecycle order may legitimately refuse (409) but never 403/404.
            assert response.status_code in (200, 201, 409), (method, path, response.text)


def test_other_tenant_gets_404_on_every_object_route(
    world: World, other_tenant: TenantKeys
) -> None:
    for method, path, body, _minimum in endpoints(world):
        if path in ("/accounts", "/entitlements"):
            continue
        response = _send(world.client, other_tenant, "admin", method, path, body)
        if method == "POST" and path == "/entitlements":
            continue
        assert response.status_code == 404, (method, path, response.text)
    foreign = {
        "account_id": world.account_id,
        "product_id": world.product_id,
        "license_model": "perpetual",
    }
    assert (
        _send(
            world.client,
            other_tenant,
            "admin",
            "POST",
            "/entitlements",
            foreign,
        ).status_code
        == 404
    )
    assert (
        _send(world.client, other_tenant, "admin", "GET", "/entitlements", None).json()["total"]
        == 0
    )
    assert _send(world.client, other_tenant, "admin", "GET", "/accounts", None).json()["total"] == 0
