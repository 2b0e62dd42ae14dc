from __future__ import annotations

import hashlib
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from hub.errors import ClaimRefused
from hub.registry.models import ClaimBatch
from hub.registry.service import remember_nonce, resolve_claim_batch
from tests.hub.conftest import Clock, TenantKeys
from tests.hub.registry.conftest import create_device

BATCHES = "/api/v1/claim-batches"


@pytest.fixture
def devices(client: TestClient, tenant: TenantKeys, device_class: dict[str, Any]) -> list[str]:
    return [create_device(client, tenant, device_class["id"], f"CB-{i}")["id"] for i in range(3)]


def test_create_returns_token_once(
    client: TestClient,
    tenant: TenantKeys,
    devices: list[str],
    session_factory: sessionmaker[Session],
) -> None:
    body = {"name": "lot 7", "serials": ["CB-0", "CB-1", "CB-1"], "ttl_seconds": 3600}
    r = client.post(BATCHES, json=body, headers=tenant.headers("operator"))
    assert r.status_code == 201, r.text
    created = r.json()
    prefix, batch_id, secret = created["token"].split("_", 2)
    assert (prefix, batch_id, created["device_count"]) == ("hubc", created["id"], 2)
    with session_factory() as s:
        assert (
            s.get_one(ClaimBatch, batch_id).token_hash
            == hashlib.sha256(secret.encode()).hexdigest()
        )
    listed = client.get(BATCHES, headers=tenant.headers("viewer"))
    assert secret not in listed.text
    assert listed.json()["items"][0]["device_count"] == 2
    assert "token" not in listed.json()["items"][0]


def test_unknown_serials_listed(client: TestClient, tenant: TenantKeys, devices: list[str]) -> None:
    body = {"name": "x", "serials": ["CB-0", "NOPE-1", "NOPE-2"]}
    r = client.post(BATCHES, json=body, headers=tenant.headers("operator"))
    assert r.status_code == 422
    assert r.json()["error"] == "unknown_serials"
    assert r.json()["details"] == {"serials": ["NOPE-1", "NOPE-2"]}
    assert client.get(BATCHES, headers=tenant.headers()).json()["total"] == 0


def test_resolve_claim_batch(
    client: TestClient,
    tenant: TenantKeys,
    devices: list[str],
    session_factory: sessionmaker[Session],
    clock: Clock,
) -> None:
    body = {"name": "x", "serials": ["CB-0"], "ttl_seconds": 600}
    created = client.post(BATCHES, json=body, headers=tenant.headers()).json()
    token = created["token"]
    with session_factory() as s:
        assert resolve_claim_batch(s, token, devices[0], clock.now).id == created["id"]
        for bad_token, device, code in [
            (token + "x", devices[0], "bad_token"),
            (token, devices[1], "bad_token"),  # not in the batch
            ("garbage", devices[0], "bad_token"),
            (token, devices[0] + "0", "bad_token"),
        ]:
            with pytest.raises(ClaimRefused) as info:
                resolve_claim_batch(s, bad_token, device, clock.now)
            assert info.value.code == code
        with pytest.raises(ClaimRefused) as info:
            resolve_claim_batch(s, token, devices[0], clock.now + timedelta(seconds=600))
        assert info.value.code == "token_expired"
    r = client.delete(f"{BATCHES}/{created['id']}", headers=tenant.headers("operator"))
    assert r.json()["revoked_at"] is not None
    with session_factory() as s, pytest.raises(ClaimRefused) as info:
        resolve_claim_batch(s, token, devices[0], clock.now)
    assert info.value.code == "token_revoked"


def test_remember_nonce_refuses_replay(
    devices: list[str], session_factory: sessionmaker[Session], clock: Clock
) -> None:
    with session_factory() as s:
        remember_nonce(s, "ab" * 16, devices[0], clock.now)
        s.commit()
    with session_factory() as s:
        with pytest.raises(ClaimRefused) as info:
            remember_nonce(s, "ab" * 16, devices[0], clock.now)
        assert info.value.code == "replayed_nonce"
