"""Entitlement test helpers: a catalogue, an account and devices, seeded over the API."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from hub.audit.models import AuditEvent
from hub.entitlements.models import (
    Activation,
    CustomerAccount,
    Entitlement,
    EntitlementEvent,
    Feature,
    SeatLease,
    TrialUse,
)
from tests.hub.conftest import Clock, TenantKeys
from tests.hub.registry.conftest import create_class, create_device

API = "/api/v1"


@dataclass
class World:
    """One tenant's catalogue: a product with flag/limit/metered features, an account."""

    tenant: TenantKeys
    product_id: str
    account_id: str
    class_id: str
    client: TestClient
    clock: Clock

    def post(self, path: str, body: Any = None, role: str = "operator") -> Any:
        return self.client.post(API + path, json=body, headers=self.tenant.headers(role))

    def get(self, path: str, role: str = "viewer", **params: Any) -> Any:
        return self.client.get(API + path, params=params, headers=self.tenant.headers(role))

    def ok(self, response: Any, status: int = 200) -> Any:
        assert response.status_code == status, response.text
        return response.json()

    def device(self, serial: str) -> str:
        return str(create_device(self.client, self.tenant, self.class_id, serial)["id"])

    def grant(self, model: str, **fields: Any) -> dict[str, Any]:
        body = {
            "account_id": self.account_id,
            "product_id": self.product_id,
            "license_model": model,
            **fields,
        }
        for key in ("starts_at", "ends_at"):
            if isinstance(body.get(key), datetime):
                body[key] = body[key].isoformat()
        return dict(self.ok(self.post("/entitlements", body), 201))

    def activate(self, ent_id: str, device_id: str) -> Any:
        return self.post(f"/entitlements/{ent_id}/activations", {"device_id": device_id})

    def features(self, device_id: str) -> dict[str, Any]:
        return dict(self.ok(self.get(f"/devices/{device_id}/entitlements"))["features"])

    def in_days(self, days: float) -> datetime:
        return self.clock.now + timedelta(days=days)


def make_world(client: TestClient, tenant: TenantKeys, clock: Clock, sku: str = "GW") -> World:
    h = tenant.headers("operator")
    product = client.post(f"{API}/products", json={"sku": sku, "name": "gw"}, headers=h).json()
    for body in (
        {"key": "vpn", "kind": "flag"},
        {"key": "users", "kind": "limit", "default_limit": 5},
        {"key": "api.calls", "kind": "metered", "cap_per_period": 1000, "period": "month"},
    ):
        response = client.post(f"{API}/products/{product['id']}/features", json=body, headers=h)
        assert response.status_code == 201, response.text
    account = client.post(f"{API}/accounts", json={"name": "Acme"}, headers=h).json()
    class_id = create_class(client, tenant)["id"]
    return World(tenant, product["id"], account["id"], class_id, client, clock)


@pytest.fixture
def world(client: TestClient, tenant: TenantKeys, clock: Clock) -> World:
    """A catalogue, an account and a device class for ``tenant``."""
    return make_world(client, tenant, clock)


_TABLES = (
    CustomerAccount,
    Feature,
    Entitlement,
    Activation,
    TrialUse,
    SeatLease,
    EntitlementEvent,
    AuditEvent,
)


def db_state(factory: sessionmaker[Session]) -> dict[str, Any]:
    """A fingerprint of every entitlement table (row counts and statuses)."""
    with factory() as s:
        state: dict[str, Any] = {
            model.__tablename__: s.scalar(select(func.count()).select_from(model))
            for model in _TABLES
        }
        state["statuses"] = sorted(
            (e.id, e.status, str(e.ends_at), str(e.feature_overrides))
            for e in s.scalars(select(Entitlement))
        )
        state["open_activations"] = sorted(
            (a.entitlement_id, a.device_id, str(a.temporary_until))
            for a in s.scalars(select(Activation).where(Activation.deactivated_at.is_(None)))
        )
        state["open_seats"] = s.scalar(
            select(func.count()).select_from(SeatLease).where(SeatLease.released_at.is_(None))
        )
    return state
