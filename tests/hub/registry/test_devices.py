from __future__ import annotations

import base64
import hashlib
import re
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from hub.registry.credentials import issue_device_credential
from hub.registry.models import Device, DeviceCredential
from tests.hub.conftest import Clock, TenantKeys
from tests.hub.registry.conftest import create_class, create_device, new_public_key_b64

DEVICES = "/api/v1/devices"


def test_create_device_with_public_key(
    client: TestClient, tenant: TenantKeys, device_class: dict[str, Any]
) -> None:
    key = new_public_key_b64()
    device = create_device(
        client, tenant, device_class["id"], "SN-1", tags=["eu", "beta"], public_key=key
    )
    assert re.fullmatch(r"dev-[0-9a-f]{20}", device["id"])
    assert device["public_key"] == key
    assert device["public_key_fingerprint"] == hashlib.sha256(base64.b64decode(key)).hexdigest()
    assert device["status"] == "registered"
    assert device["online"] is False
    assert device["tags"] == ["eu", "beta"]
    got = client.get(f"{DEVICES}/{device['id']}", headers=tenant.headers("viewer"))
    assert got.json() == device


@pytest.mark.parametrize(
    ("patch", "code"),
    [
        ({"serial": "bad serial"}, "validation_failed"),
        ({"serial": "a#b"}, "validation_failed"),
        ({"tags": ["ok", "no/slash"]}, "validation_failed"),
        ({"tags": [f"t{i}" for i in range(40)]}, "validation_failed"),
        ({"public_key": "not base64!"}, "validation_failed"),
        ({"public_key": base64.b64encode(b"short").decode()}, "validation_failed"),
        ({"device_class_id": "00000000-0000-0000-0000-000000000000"}, "unknown_device_class"),
    ],
)
def test_create_device_rejects_bad_input(
    client: TestClient,
    tenant: TenantKeys,
    device_class: dict[str, Any],
    patch: dict[str, Any],
    code: str,
) -> None:
    body = {"serial": "SN-OK", "device_class_id": device_class["id"], **patch}
    r = client.post(DEVICES, json=body, headers=tenant.headers("operator"))
    assert r.status_code == 422, r.text
    assert r.json()["error"] == code


def test_duplicates_conflict(
    client: TestClient, tenant: TenantKeys, other_tenant: TenantKeys, device_class: dict[str, Any]
) -> None:
    key = new_public_key_b64()
    create_device(client, tenant, device_class["id"], "SN-1", public_key=key)
    body = {"serial": "SN-1", "device_class_id": device_class["id"]}
    r = client.post(DEVICES, json=body, headers=tenant.headers())
    assert (r.status_code, r.json()["error"]) == (409, "duplicate_serial")
    body = {"serial": "SN-2", "device_class_id": device_class["id"], "public_key": key}
    r = client.post(DEVICES, json=body, headers=tenant.headers())
    assert (r.status_code, r.json()["error"]) == (409, "duplicate_public_key")
    # The same serial is free in another tenant.
    other_class = create_class(client, other_tenant)
    create_device(client, other_tenant, other_class["id"], "SN-1")


def test_list_filters_and_pagination(
    client: TestClient,
    tenant: TenantKeys,
    session_factory: sessionmaker[Session],
    clock: Clock,
) -> None:
    class_a = create_class(client, tenant, "a")["id"]
    class_b = create_class(client, tenant, "b")["id"]
    ids = {}
    for i, (serial, cls, tags) in enumerate(
        [
            ("AB-1", class_a, ["eu"]),
            ("AB-2", class_a, ["us", "eu"]),
            ("A_3", class_b, []),
            ("AX3", class_b, ["us"]),
            ("ZZ-9", class_a, ["eux"]),
        ]
    ):
        clock.advance(seconds=i)
        ids[serial] = create_device(client, tenant, cls, serial, tags=tags)["id"]
    with session_factory() as s:
        s.get_one(Device, ids["AX3"]).online = True
        s.get_one(Device, ids["ZZ-9"]).status = "disabled"
        s.commit()

    def serials(**params: Any) -> list[str]:
        r = client.get(DEVICES, params=params, headers=tenant.headers("viewer"))
        assert r.status_code == 200, r.text
        return [d["serial"] for d in r.json()["items"]]

    assert serials() == ["AB-1", "AB-2", "A_3", "AX3", "ZZ-9"]
    assert serials(device_class_id=class_b) == ["A_3", "AX3"]
    assert serials(tag="eu") == ["AB-1", "AB-2"]
    assert serials(tag="us", device_class_id=class_b) == ["AX3"]
    assert serials(serial_prefix="A_") == ["A_3"]  # '_' is literal, not a wildcard
    assert serials(serial_prefix="AB") == ["AB-1", "AB-2"]
    assert serials(serial_prefix="%") == []
    assert serials(online=True) == ["AX3"]
    assert len(serials(online=False)) == 4
    assert serials(status="disabled") == ["ZZ-9"]
    page = client.get(DEVICES, params={"limit": 2, "offset": 2}, headers=tenant.headers()).json()
    assert ([d["serial"] for d in page["items"]], page["total"]) == (["A_3", "AX3"], 5)
    assert (
        client.get(DEVICES, params={"status": "bogus"}, headers=tenant.headers()).status_code == 422
    )


def test_patch_tags_and_disable_enable(
    client: TestClient,
    tenant: TenantKeys,
    device_class: dict[str, Any],
    session_factory: sessionmaker[Session],
    clock: Clock,
) -> None:
    device = create_device(client, tenant, device_class["id"], "SN-P")
    url = f"{DEVICES}/{device['id']}"
    h = tenant.headers("operator")
    r = client.patch(url, json={"tags": ["x", "x", "y"]}, headers=h)
    assert r.json()["tags"] == ["x", "y"]
    assert client.patch(url, json={"tags": ["bad tag"]}, headers=h).status_code == 422
    assert client.patch(url, json={"status": "claimed"}, headers=h).status_code == 422
    assert client.patch(url, json={"status": "disabled"}, headers=h).json()["status"] == "disabled"
    assert client.patch(url, json={"status": "registered"}, headers=h).json()["status"] == (
        "registered"
    )
    # A claimed device cannot be patched back to registered, only reset.
    with session_factory() as s:
        dev = s.get_one(Device, device["id"])
        dev.status = "claimed"
        issue_device_credential(s, dev, clock.now)
        s.commit()
    r = client.patch(url, json={"status": "registered"}, headers=h)
    assert r.status_code == 409
    client.patch(url, json={"status": "disabled"}, headers=h)
    # Re-enabling a device that kept its credential returns it to claimed.
    assert client.patch(url, json={"status": "registered"}, headers=h).json()["status"] == (
        "claimed"
    )


def test_reset_claim_deletes_credential(
    client: TestClient,
    tenant: TenantKeys,
    device_class: dict[str, Any],
    session_factory: sessionmaker[Session],
    clock: Clock,
) -> None:
    device = create_device(client, tenant, device_class["id"], "SN-R")
    with session_factory() as s:
        dev = s.get_one(Device, device["id"])
        dev.status = "claimed"
        dev.claimed_at = clock.now
        issue_device_credential(s, dev, clock.now)
        s.commit()
    r = client.post(f"{DEVICES}/{device['id']}/reset-claim", headers=tenant.headers("operator"))
    assert r.status_code == 200
    assert (r.json()["status"], r.json()["claimed_at"]) == ("registered", None)
    with session_factory() as s:
        assert s.get(DeviceCredential, device["id"]) is None
    events = client.get(
        "/api/v1/audit", params={"action": "device.reset_claim"}, headers=tenant.headers()
    ).json()["items"]
    assert events[0]["target_id"] == device["id"]
    assert events[0]["detail"] == {
        "previous_status": "claimed",
        "credential_deleted": True,
        "key_forgotten": False,
    }


def test_reset_claim_can_forget_the_key(
    client: TestClient, tenant: TenantKeys, device_class: dict[str, Any]
) -> None:
    raw = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    key = base64.b64encode(raw).decode()
    device = create_device(client, tenant, device_class["id"], "SN-FK", public_key=key)
    assert client.get(f"{DEVICES}/{device['id']}", headers=tenant.headers()).json()["public_key"]
    kept = client.post(f"{DEVICES}/{device['id']}/reset-claim", headers=tenant.headers("operator"))
    assert kept.json()["public_key"] == key
    r = client.post(
        f"{DEVICES}/{device['id']}/reset-claim",
        params={"forget_key": "true"},
        headers=tenant.headers("operator"),
    )
    assert r.status_code == 200 and r.json()["public_key"] is None


def test_unknown_device_is_404(client: TestClient, tenant: TenantKeys) -> None:
    r = client.get(f"{DEVICES}/dev-00000000000000000000", headers=tenant.headers())
    assert r.status_code == 404
    assert r.json() == {
        "error": "not_found",
        "message": "device dev-00000000000000000000 not found",
    }
