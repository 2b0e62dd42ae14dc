"""Registry test helpers: seeding objects through the API."""

from __future__ import annotations

import base64
import uuid
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from fastapi.testclient import TestClient

from tests.hub.conftest import TenantKeys


def new_public_key_b64() -> str:
    """A fresh raw Ed25519 public key, base64."""
    raw = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def create_class(client: TestClient, tenant: TenantKeys, name: str = "gateway") -> dict[str, Any]:
    response = client.post(
        "/api/v1/device-classes",
        json={"name": name, "vendor_id": str(uuid.uuid4()), "class_id": str(uuid.uuid4())},
        headers=tenant.headers("operator"),
    )
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


def create_device(
    client: TestClient, tenant: TenantKeys, class_id: str, serial: str, **extra: Any
) -> dict[str, Any]:
    response = client.post(
        "/api/v1/devices",
        json={"serial": serial, "device_class_id": class_id, **extra},
        headers=tenant.headers("operator"),
    )
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


@pytest.fixture
def device_class(client: TestClient, tenant: TenantKeys) -> dict[str, Any]:
    """A device class of ``tenant``."""
    return create_class(client, tenant)
