from __future__ import annotations

import hashlib

from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from hub.registry.models import ApiKey
from tests.hub.conftest import Clock, TenantKeys

KEYS = "/api/v1/api-keys"


def test_create_returns_key_once_and_stores_only_its_hash(
    client: TestClient, tenant: TenantKeys, session_factory: sessionmaker[Session]
) -> None:
    r = client.post(KEYS, json={"name": "ci", "role": "operator"}, headers=tenant.headers())
    assert r.status_code == 201
    body = r.json()
    key = body["key"]
    prefix, key_id, secret = key.split("_", 2)
    assert (prefix, key_id) == ("hubk", body["id"])
    with session_factory() as s:
        row = s.get_one(ApiKey, key_id)
        assert row.secret_hash == hashlib.sha256(secret.encode()).hexdigest()
        stored = " ".join(str(v) for v in (row.id, row.name, row.role, row.secret_hash))
        assert secret not in stored and key not in stored
    listed = client.get(KEYS, headers=tenant.headers())
    assert secret not in listed.text
    assert all("key" not in item and "secret_hash" not in item for item in listed.json()["items"])
    assert (
        client.get("/api/v1/whoami", headers={"Authorization": f"Bearer {key}"}).json()["role"]
        == "operator"
    )


def test_x_api_key_header_and_whoami(client: TestClient, tenant: TenantKeys) -> None:
    r = client.get("/api/v1/whoami", headers={"X-API-Key": tenant.viewer})
    assert r.status_code == 200
    assert r.json()["tenant_id"] == tenant.tenant_id
    assert r.json()["tenant_name"] == tenant.name
    assert r.json()["role"] == "viewer"


def test_bad_keys_are_401(client: TestClient, tenant: TenantKeys) -> None:
    _, key_id, secret = tenant.admin.split("_", 2)
    for headers in (
        {},
        {"Authorization": "Bearer "},
        {"Authorization": "Bearer nonsense"},
        {"Authorization": f"Bearer hubk_{key_id}_{secret}x"},
        {"Authorization": f"Bearer hubk_ffffffffffffffff_{secret}"},
        {"X-API-Key": f"hubc_{key_id}_{secret}"},
    ):
        r = client.get("/api/v1/whoami", headers=headers)
        assert r.status_code == 401, headers
        assert r.json()["error"] == "unauthenticated"
        assert secret not in r.text


def test_revoke_locks_key_out_and_is_idempotent(client: TestClient, tenant: TenantKeys) -> None:
    key_id = tenant.operator.split("_")[1]
    r = client.delete(f"{KEYS}/{key_id}", headers=tenant.headers())
    assert r.status_code == 200
    assert r.json()["revoked_at"] is not None
    assert client.get("/api/v1/whoami", headers=tenant.headers("operator")).status_code == 401
    assert client.delete(f"{KEYS}/{key_id}", headers=tenant.headers()).status_code == 200


def test_last_admin_key_cannot_be_revoked(client: TestClient, tenant: TenantKeys) -> None:
    admin_id = tenant.admin.split("_")[1]
    r = client.delete(f"{KEYS}/{admin_id}", headers=tenant.headers())
    assert r.status_code == 409
    second = client.post(KEYS, json={"name": "a2", "role": "admin"}, headers=tenant.headers())
    assert client.delete(f"{KEYS}/{admin_id}", headers=tenant.headers()).status_code == 200
    headers = {"Authorization": f"Bearer {second.json()['key']}"}
    assert client.get(KEYS, headers=headers).status_code == 200


def test_last_used_at_is_throttled(
    client: TestClient, tenant: TenantKeys, clock: Clock, session_factory: sessionmaker[Session]
) -> None:
    key_id = tenant.viewer.split("_")[1]

    def last_used() -> object:
        with session_factory() as s:
            return s.scalar(select(ApiKey.last_used_at).where(ApiKey.id == key_id))

    client.get("/api/v1/whoami", headers=tenant.headers("viewer"))
    first = last_used()
    assert first == clock.now
    clock.advance(seconds=10)
    client.get("/api/v1/whoami", headers=tenant.headers("viewer"))
    assert last_used() == first
    clock.advance(minutes=5)
    client.get("/api/v1/whoami", headers=tenant.headers("viewer"))
    assert last_used() == clock.now


def test_invalid_role_is_422(client: TestClient, tenant: TenantKeys) -> None:
    r = client.post(KEYS, json={"name": "x", "role": "root"}, headers=tenant.headers())
    assert r.status_code == 422
    assert r.json()["error"] == "validation_failed"
