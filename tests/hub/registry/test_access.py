"""Role matrix and tenant isolation across every resource and verb."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.hub.conftest import TenantKeys
from tests.hub.registry.conftest import create_class, create_device

RANK = {"viewer": 0, "operator": 1, "admin": 2}


@dataclass
class World:
    class_id: str
    product_id: str
    device_id: str
    batch_id: str
    spare_key_id: str


def build_world(client: TestClient, tenant: TenantKeys) -> World:
    h = tenant.headers()
    class_id = create_class(client, tenant)["id"]
    device_id = create_device(client, tenant, class_id, "W-1")["id"]
    product = client.post("/api/v1/products", json={"sku": "W", "name": "w"}, headers=h).json()
    batch = client.post(
        "/api/v1/claim-batches", json={"name": "b", "serials": ["W-1"]}, headers=h
    ).json()
    spare = client.post("/api/v1/api-keys", json={"name": "spare"}, headers=h).json()
    return World(class_id, product["id"], device_id, batch["id"], spare["id"])


def endpoints(w: World) -> list[tuple[str, str, Any, str]]:
    """(method, path, json body, minimum role) for every registry route."""
    new_class = {"name": "n", "vendor_id": str(uuid.uuid4()), "class_id": str(uuid.uuid4())}
    return [
        ("GET", "/whoami", None, "viewer"),
        ("GET", "/audit", None, "viewer"),
        ("GET", "/products", None, "viewer"),
        ("GET", f"/products/{w.product_id}", None, "viewer"),
        ("POST", "/products", {"sku": f"S{uuid.uuid4().hex[:6]}", "name": "n"}, "operator"),
        ("PATCH", f"/products/{w.product_id}", {"name": "m"}, "operator"),
        ("GET", "/device-classes", None, "viewer"),
        ("GET", f"/device-classes/{w.class_id}", None, "viewer"),
        ("POST", "/device-classes", new_class, "operator"),
        ("PATCH", f"/device-classes/{w.class_id}", {"name": "m"}, "operator"),
        ("GET", "/devices", None, "viewer"),
        ("GET", f"/devices/{w.device_id}", None, "viewer"),
        (
            "POST",
            "/devices",
            {"serial": f"N{uuid.uuid4().hex[:6]}", "device_class_id": w.class_id},
            "operator",
        ),
        ("PATCH", f"/devices/{w.device_id}", {"tags": ["t"]}, "operator"),
        ("POST", f"/devices/{w.device_id}/reset-claim", None, "operator"),
        ("GET", "/claim-batches", None, "viewer"),
        ("GET", f"/claim-batches/{w.batch_id}", None, "viewer"),
        ("POST", "/claim-batches", {"name": "b", "serials": ["W-1"]}, "operator"),
        ("DELETE", f"/claim-batches/{w.batch_id}", None, "operator"),
        ("GET", "/api-keys", None, "admin"),
        ("POST", "/api-keys", {"name": "k"}, "admin"),
        ("DELETE", f"/api-keys/{w.spare_key_id}", None, "admin"),
    ]


def test_role_matrix(client: TestClient, tenant: TenantKeys) -> None:
    world = build_world(client, tenant)
    for method, path, body, minimum in endpoints(world):
        for role in ("viewer", "operator", "admin"):
            r = client.request(method, "/api/v1" + path, json=body, headers=tenant.headers(role))
            if RANK[role] >= RANK[minimum]:
                # 409 is fine here: a repeated create is refused on its merits.
                assert r.status_code in (200, 201, 409), (method, path, role, r.text)
            else:
                assert r.status_code == 403, (method, path, role, r.text)
                assert r.json()["error"] == "permission_denied"
    # The import endpoint reads its own body; check its role gate separately.
    r = client.post(
        "/api/v1/devices/import",
        content="serial,device_class_id\n",
        headers={**tenant.headers("viewer"), "Content-Type": "text/csv"},
    )
    assert r.status_code == 403


def test_every_route_needs_a_key(client: TestClient, tenant: TenantKeys) -> None:
    world = build_world(client, tenant)
    for method, path, body, _ in endpoints(world):
        r = client.request(method, "/api/v1" + path, json=body)
        assert r.status_code == 401, (method, path)


def _fake_id(path: str, real: str) -> str:
    if real.startswith("dev-"):
        return "dev-" + "0" * 20
    return str(uuid.uuid4()) if len(real) == 36 else "0" * len(real)


def test_other_tenant_ids_behave_like_missing_ones(
    client: TestClient, tenant: TenantKeys, other_tenant: TenantKeys
) -> None:
    world = build_world(client, tenant)
    build_world(client, other_tenant)
    owned = {world.product_id, world.class_id, world.device_id, world.batch_id, world.spare_key_id}
    for method, path, body, _ in endpoints(world):
        real = next((i for i in owned if i in path), None)
        if real is None:
            continue
        foreign = client.request(
            method, "/api/v1" + path, json=body, headers=other_tenant.headers("admin")
        )
        fake = _fake_id(path, real)
        missing = client.request(
            method,
            "/api/v1" + path.replace(real, fake),
            json=body,
            headers=other_tenant.headers("admin"),
        )
        assert foreign.status_code == missing.status_code == 404, (method, path, foreign.text)
        assert foreign.json()["error"] == missing.json()["error"] == "not_found"
        assert foreign.json()["message"].replace(real, "X") == missing.json()["message"].replace(
            fake, "X"
        )
    # Nothing was changed by the other tenant's attempts.
    h = tenant.headers()
    assert (
        client.get(f"/api/v1/claim-batches/{world.batch_id}", headers=h).json()["revoked_at"]
        is None
    )
    keys = client.get("/api/v1/api-keys", headers=h).json()["items"]
    assert all(k["revoked_at"] is None for k in keys)


def test_lists_and_references_are_tenant_scoped(
    client: TestClient, tenant: TenantKeys, other_tenant: TenantKeys
) -> None:
    world = build_world(client, tenant)
    h = other_tenant.headers()
    for path in ("/products", "/device-classes", "/devices", "/claim-batches"):
        assert client.get("/api/v1" + path, headers=h).json()["total"] == 0, path
    own_audit = client.get("/api/v1/audit", params={"limit": 500}, headers=h).json()["items"]
    assert {e["target_id"] for e in own_audit} <= {other_tenant.tenant_id} | {
        k["id"] for k in client.get("/api/v1/api-keys", headers=h).json()["items"]
    }
    keys = client.get("/api/v1/api-keys", headers=h).json()["items"]
    assert world.spare_key_id not in {k["id"] for k in keys}
    # Referencing the first tenant's class or serials fails like an unknown one.
    r = client.post(
        "/api/v1/devices", json={"serial": "X", "device_class_id": world.class_id}, headers=h
    )
    assert (r.status_code, r.json()["error"]) == (422, "unknown_device_class")
    r = client.post("/api/v1/claim-batches", json={"name": "b", "serials": ["W-1"]}, headers=h)
    assert (r.status_code, r.json()["details"]) == (422, {"serials": ["W-1"]})
    r = client.get("/api/v1/devices", params={"device_class_id": world.class_id}, headers=h)
    assert r.json()["total"] == 0
    r = client.get("/api/v1/audit", params={"target_id": world.device_id}, headers=h)
    assert r.json()["total"] == 0
    csv = f"serial,device_class_id\nX,{world.class_id}\n"
    r = client.post(
        "/api/v1/devices/import", content=csv, headers={**h, "Content-Type": "text/csv"}
    )
    assert r.json()["rows"][0]["error_code"] == "unknown_device_class"


@pytest.mark.parametrize("role", ["viewer", "operator"])
def test_import_role_gate(client: TestClient, tenant: TenantKeys, role: str) -> None:
    r = client.post(
        "/api/v1/devices/import",
        content="serial,device_class_id\n",
        headers={**tenant.headers(role), "Content-Type": "text/csv"},
    )
    assert r.status_code == (403 if role == "viewer" else 200)
