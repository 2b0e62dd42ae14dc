"""Products and device classes."""

from __future__ import annotations

import uuid

from fastapi.testclient import TestClient

from tests.hub.conftest import TenantKeys

PRODUCTS = "/api/v1/products"
CLASSES = "/api/v1/device-classes"


def test_product_lifecycle(client: TestClient, tenant: TenantKeys) -> None:
    h = tenant.headers("operator")
    r = client.post(PRODUCTS, json={"sku": "PRO-1", "name": "Pro"}, headers=h)
    assert r.status_code == 201
    product = r.json()
    assert client.get(f"{PRODUCTS}/{product['id']}", headers=h).json() == product
    r = client.patch(f"{PRODUCTS}/{product['id']}", json={"description": "d"}, headers=h)
    assert r.json()["description"] == "d"
    assert r.json()["name"] == "Pro"
    dup = client.post(PRODUCTS, json={"sku": "PRO-1", "name": "Again"}, headers=h)
    assert dup.status_code == 409
    assert dup.json()["error"] == "conflict"


def test_product_validation(client: TestClient, tenant: TenantKeys) -> None:
    h = tenant.headers("operator")
    for body in ({"sku": "bad sku", "name": "x"}, {"sku": "a/b", "name": "x"}, {"sku": "A"}):
        assert client.post(PRODUCTS, json=body, headers=h).status_code == 422


def test_same_sku_in_two_tenants_is_fine(
    client: TestClient, tenant: TenantKeys, other_tenant: TenantKeys
) -> None:
    for t in (tenant, other_tenant):
        r = client.post(PRODUCTS, json={"sku": "SHARED", "name": "x"}, headers=t.headers())
        assert r.status_code == 201


def test_products_pagination(client: TestClient, tenant: TenantKeys) -> None:
    h = tenant.headers()
    for i in range(7):
        client.post(PRODUCTS, json={"sku": f"P{i}", "name": f"n{i}"}, headers=h)
    page = client.get(PRODUCTS, params={"limit": 3, "offset": 3}, headers=h).json()
    assert page["total"] == 7
    assert [p["sku"] for p in page["items"]] == ["P3", "P4", "P5"]
    assert (page["limit"], page["offset"]) == (3, 3)
    for params in ({"limit": 0}, {"limit": 501}, {"offset": -1}):
        assert client.get(PRODUCTS, params=params, headers=h).status_code == 422


def test_device_class_lifecycle(client: TestClient, tenant: TenantKeys) -> None:
    h = tenant.headers("operator")
    body = {"name": "gw", "vendor_id": str(uuid.uuid4()), "class_id": str(uuid.uuid4())}
    r = client.post(CLASSES, json=body, headers=h)
    assert r.status_code == 201
    created = r.json()
    assert created["vendor_id"] == body["vendor_id"]
    assert client.post(CLASSES, json={**body, "name": "other"}, headers=h).status_code == 409
    r = client.patch(f"{CLASSES}/{created['id']}", json={"name": "gateway"}, headers=h)
    assert r.json()["name"] == "gateway"
    listed = client.get(CLASSES, headers=h).json()
    assert [c["id"] for c in listed["items"]] == [created["id"]]
    bad = client.post(CLASSES, json={**body, "vendor_id": "not-a-uuid"}, headers=h)
    assert bad.status_code == 422
