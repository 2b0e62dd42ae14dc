from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from hub.broker.passwords import hash_password, verify_password
from hub.broker.principals import Principal, PrincipalKind
from hub.errors import Conflict
from hub.registry.credentials import (
    DbCredentialVerifier,
    issue_device_credential,
    iter_device_password_hashes,
)
from hub.registry.models import Device, DeviceCredential
from hub.registry.tenants import create_tenant
from tests.hub.conftest import Clock, TenantKeys
from tests.hub.registry.conftest import create_device


@pytest.fixture
def claimed(
    client: TestClient,
    tenant: TenantKeys,
    device_class: dict[str, Any],
    session_factory: sessionmaker[Session],
    clock: Clock,
) -> tuple[str, str]:
    device_id = create_device(client, tenant, device_class["id"], "CR-1")["id"]
    with session_factory() as s:
        device = s.get_one(Device, device_id)
        password = issue_device_credential(s, device, clock.now)
        device.status = "claimed"
        s.commit()
    return device_id, password


def verifier(factory: sessionmaker[Session]) -> DbCredentialVerifier:
    return DbCredentialVerifier(
        factory, hub_username="hub-main", hub_password_hash=hash_password("hub-secret")
    )


def test_issue_stores_only_a_7_hash(
    claimed: tuple[str, str], session_factory: sessionmaker[Session]
) -> None:
    device_id, password = claimed
    with session_factory() as s:
        cred = s.get_one(DeviceCredential, device_id)
    assert cred.username == device_id
    assert cred.password_hash.startswith("$7$")
    assert password not in cred.password_hash
    assert verify_password(password, cred.password_hash)


def test_verifier(claimed: tuple[str, str], session_factory: sessionmaker[Session]) -> None:
    device_id, password = claimed
    v = verifier(session_factory)
    assert v.verify("hub-main", "hub-secret") == Principal(PrincipalKind.HUB, "hub-main")
    assert v.verify("hub-main", "wrong") is None
    assert v.verify("hub-main", None) is None
    assert v.verify("claim-abc123", None) == Principal(PrincipalKind.CLAIM, "claim-abc123")
    assert v.verify("claim-", "x") is None
    assert v.verify(device_id, password) == Principal(PrincipalKind.DEVICE, device_id)
    assert v.verify(device_id, password + "x") is None
    assert v.verify(device_id, None) is None
    assert v.verify("dev-" + "0" * 20, password) is None
    for junk in ("", "#", "dev-+", "someone", "a/b"):
        assert v.verify(junk, password) is None


@pytest.mark.parametrize("status", ["registered", "disabled"])
def test_only_claimed_devices_log_in(
    claimed: tuple[str, str], session_factory: sessionmaker[Session], status: str
) -> None:
    device_id, password = claimed
    with session_factory() as s:
        s.get_one(Device, device_id).status = status
        s.commit()
        assert list(iter_device_password_hashes(s)) == [] or all(
            u != device_id for u, _ in iter_device_password_hashes(s)
        )
    assert verifier(session_factory).verify(device_id, password) is None


def test_password_file_rows(
    claimed: tuple[str, str], session_factory: sessionmaker[Session]
) -> None:
    device_id, password = claimed
    with session_factory() as s:
        rows = dict(iter_device_password_hashes(s))
    assert verify_password(password, rows[device_id])


def test_reissue_replaces_password(
    claimed: tuple[str, str], session_factory: sessionmaker[Session], clock: Clock
) -> None:
    device_id, old = claimed
    with session_factory() as s:
        new = issue_device_credential(s, s.get_one(Device, device_id), clock.now)
        s.commit()
    v = verifier(session_factory)
    assert v.verify(device_id, old) is None
    assert v.verify(device_id, new) is not None


def test_create_tenant_names_are_unique(session: Session, clock: Clock) -> None:
    tenant, key = create_tenant(session, "  Unique Co  ", clock.now)
    assert tenant.name == "Unique Co"
    assert key.startswith("hubk_")
    with pytest.raises(Conflict):
        create_tenant(session, "Unique Co", clock.now)
