from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from hub.audit.models import AuditEvent
from tests.hub.conftest import Clock, TenantKeys
from tests.hub.registry.conftest import create_class, create_device

AUDIT = "/api/v1/audit"


def actions(client: TestClient, tenant: TenantKeys, **params: Any) -> list[tuple[str, str]]:
    r = client.get(AUDIT, params={"limit": 500, **params}, headers=tenant.headers("viewer"))
    assert r.status_code == 200, r.text
    return [(e["action"], e["actor"]) for e in r.json()["items"]]


def test_every_state_change_is_audited(client: TestClient, tenant: TenantKeys) -> None:
    h = tenant.headers("operator")
    op = f"key:{tenant.operator.split('_')[1]}"
    admin = f"key:{tenant.admin.split('_')[1]}"
    cls = create_class(client, tenant)["id"]
    client.patch(f"/api/v1/device-classes/{cls}", json={"name": "renamed"}, headers=h)
    product = client.post("/api/v1/products", json={"sku": "A", "name": "a"}, headers=h).json()
    client.patch(f"/api/v1/products/{product['id']}", json={"name": "b"}, headers=h)
    device = create_device(client, tenant, cls, "AU-1")["id"]
    client.patch(f"/api/v1/devices/{device}", json={"tags": ["x"], "status": "disabled"}, headers=h)
    client.post(f"/api/v1/devices/{device}/reset-claim", headers=h)
    client.post(
        "/api/v1/devices/import",
        content=f"serial,device_class_id\nAU-2,{cls}\n",
        headers={**h, "Content-Type": "text/csv"},
    )
    batch = client.post(
        "/api/v1/claim-batches", json={"name": "b", "serials": ["AU-1"]}, headers=h
    ).json()
    client.delete(f"/api/v1/claim-batches/{batch['id']}", headers=h)
    key = client.post("/api/v1/api-keys", json={"name": "k"}, headers=tenant.headers()).json()
    client.delete(f"/api/v1/api-keys/{key['id']}", headers=tenant.headers())
    got = list(reversed(actions(client, tenant)))
    assert got[:4] == [("tenant.create", "cli")] + [("api_key.create", "cli")] * 3
    assert got[4:] == [
        ("device_class.create", op),
        ("device_class.update", op),
        ("product.create", op),
        ("product.update", op),
        ("device.create", op),
        ("device.update", op),
        ("device.reset_claim", op),
        ("device.create", op),
        ("device.import", op),
        ("claim_batch.create", op),
        ("claim_batch.revoke", op),
        ("api_key.create", admin),
        ("api_key.revoke", admin),
    ]


def test_reads_and_failures_write_nothing(
    client: TestClient, tenant: TenantKeys, session_factory: sessionmaker[Session]
) -> None:
    def count() -> int:
        with session_factory() as s:
            return (
                s.scalar(select(func.count()).where(AuditEvent.tenant_id == tenant.tenant_id)) or 0
            )

    before = count()
    h = tenant.headers("operator")
    client.get("/api/v1/devices", headers=h)
    client.post("/api/v1/products", json={"sku": "D", "name": "d"}, headers=h)
    after_create = count()
    assert after_create == before + 1
    # A refused change rolls back with its audit row: nothing half-written.
    assert (
        client.post("/api/v1/products", json={"sku": "D", "name": "d"}, headers=h).status_code
        == 409
    )
    body = {"name": "b", "serials": ["NOPE"]}
    assert client.post("/api/v1/claim-batches", json=body, headers=h).status_code == 422
    assert count() == after_create


def test_filters_and_pagination(client: TestClient, tenant: TenantKeys, clock: Clock) -> None:
    start = clock.now
    cls = create_class(client, tenant)["id"]
    ids = []
    for i in range(5):
        clock.advance(minutes=1)
        ids.append(create_device(client, tenant, cls, f"F-{i}")["id"])
    assert len(actions(client, tenant, action="device.create")) == 5
    assert actions(client, tenant, target_type="device", target_id=ids[2]) == [
        ("device.create", f"key:{tenant.operator.split('_')[1]}")
    ]
    window = {
        "since": (start + timedelta(minutes=2)).isoformat(),
        "until": (start + timedelta(minutes=4)).isoformat(),
    }
    assert len(actions(client, tenant, **window)) == 2
    page = client.get(
        AUDIT, params={"action": "device.create", "limit": 2, "offset": 1}, headers=tenant.headers()
    ).json()
    assert page["total"] == 5
    assert [e["target_id"] for e in page["items"]] == [ids[3], ids[2]]  # newest first
    assert actions(client, tenant, action=str(uuid.uuid4())) == []
