"""Billing fixtures: the app with the billing plugin mounted, and a biller world.

A :class:`Biller` is one tenant's shop (product ``GW`` with the metered
feature ``api.calls``, account Acme, two claimed devices) with a subscription
that starts at ``T0`` (2030-01-01 12:00 UTC), so the account's billing
periods are ``[Jan 1 12:00, Feb 1 12:00)``, ``[Feb 1 12:00, Mar 1 12:00)``...
Usage is written straight into ``usage_records`` (billing alone), each record
with the coverage ingestion would give it; replays go through the same
unique key as ingestion (``ON CONFLICT DO NOTHING``).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from hub.api.deps import get_now
from hub.app import API_PREFIX, create_app
from hub.billing.jobs import BillingRun, run_periods
from hub.billing.plugin import PLUGIN
from hub.billing.settings import BillingSettings
from hub.entitlements import service as ent_service
from hub.entitlements.schemas import FeatureCreate
from hub.settings import Settings
from hub.telemetry.models import UsageRecord
from tests.hub.analytics.conftest import T0, Shop, make_shop
from tests.hub.conftest import Clock

API = API_PREFIX
GRACE = timedelta(hours=1)
JAN = (T0, datetime(2030, 2, 1, 12, tzinfo=T0.tzinfo))
FEB = (JAN[1], datetime(2030, 3, 1, 12, tzinfo=T0.tzinfo))
MAR = (FEB[1], datetime(2030, 4, 1, 12, tzinfo=T0.tzinfo))


def billing_settings(**overrides: Any) -> BillingSettings:
    """Test settings: one hour of grace, private webhook URLs allowed, quick retries."""
    values: dict[str, Any] = {
        "grace_seconds": int(GRACE.total_seconds()),
        "webhook_allow_private": True,
        "delivery_backoff_seconds": 10,
        "delivery_max_backoff_seconds": 60,
        "delivery_max_attempts": 4,
        "delivery_timeout_seconds": 5,
    }
    values.update(overrides)
    return BillingSettings(**values)


def mount_billing(app: FastAPI) -> None:
    """Mount the billing plugin's routers unless ``hub.plugins`` already did."""
    paths = {getattr(route, "path", "") for route in app.routes}
    if f"{API}/invoices" in paths:
        return
    for router in PLUGIN.routers:
        app.include_router(router, prefix=API)


@pytest.fixture
def app(session_factory: sessionmaker[Session], clock: Clock, tmp_path: Path) -> FastAPI:
    """The hub app with the billing routers, the test clock and test billing settings."""
    application = create_app(Settings(data_dir=tmp_path), session_factory=session_factory)
    mount_billing(application)
    application.dependency_overrides[get_now] = clock
    application.state.billing_settings = billing_settings()
    return application


@dataclass
class Biller:
    """One tenant billing one account; usage written directly, jobs run at chosen instants."""

    shop: Shop
    client: TestClient
    settings: BillingSettings
    entitlement_id: str
    devices: list[str]
    seqs: dict[str, itertools.count[int]] = field(default_factory=dict)

    @property
    def factory(self) -> sessionmaker[Session]:
        return self.shop.factory

    @property
    def tenant_id(self) -> str:
        return self.shop.tenant_id

    @property
    def account_id(self) -> str:
        return self.shop.account_id

    @property
    def product_id(self) -> str:
        return self.shop.product_id

    def headers(self, role: str = "admin") -> dict[str, str]:
        return self.shop.tenant.headers(role)

    def get(self, path: str, role: str = "viewer", **params: Any) -> Any:
        return self.client.get(API + path, params=params, headers=self.headers(role))

    def post(self, path: str, body: Any = None, role: str = "admin") -> Any:
        return self.client.post(API + path, json=body, headers=self.headers(role))

    def ok(self, response: Any, status: int = 200) -> Any:
        assert response.status_code == status, response.text
        return response.json()

    def plan(
        self,
        plan: dict[str, Any],
        meter: str | None = "api.calls",
        active_from: datetime = T0 - timedelta(days=1),
        **fields: Any,
    ) -> dict[str, Any]:
        body = {"meter": meter, "plan": plan, "active_from": active_from.isoformat(), **fields}
        path = f"/products/{fields.pop('product_id', self.product_id)}/price-plans"
        return dict(self.ok(self.post(path, body, role="operator"), 201))

    def usage(
        self,
        quantity: int | str | Decimal,
        recorded_at: datetime,
        received_at: datetime | None = None,
        *,
        device: int = 0,
        meter: str = "api.calls",
        seq: int | None = None,
        covered: bool = True,
        over_cap: bool = False,
    ) -> tuple[str, int]:
        """Store one record (``seq`` given: a replay of that key). Returns its key."""
        device_id = self.devices[device]
        if seq is None:
            seq = next(self.seqs.setdefault(device_id, itertools.count(1)))
        row = {
            "tenant_id": self.tenant_id, "device_id": device_id, "boot_epoch": 1, "seq": seq,
            "meter": meter, "quantity": Decimal(quantity).quantize(Decimal("0.000001")),
            "dimension": None, "recorded_at": recorded_at,
            "received_at": received_at or recorded_at + timedelta(seconds=5),
            "account_id": self.account_id if covered else None,
            "product_id": self.product_id if covered else None,
            "entitlement_id": self.entitlement_id if covered else None, "over_cap": over_cap,
        }  # fmt: skip
        with self.factory() as s:
            s.execute(_insert_ignoring_duplicates(s), [row])
            s.commit()
        return device_id, seq

    def feature(self, key: str, **fields: Any) -> None:
        """Add a metered feature to the product."""
        data = FeatureCreate(key=key, kind="metered", **fields)
        with self.shop.tx() as s:
            ent_service.create_feature(
                s, tenant_id=self.tenant_id, actor="test", now=T0,
                product_id=self.product_id, data=data,
            )  # fmt: skip

    def delete_usage(self, device_id: str, seq: int) -> None:
        with self.factory() as s:
            s.execute(
                delete(UsageRecord).where(
                    UsageRecord.device_id == device_id, UsageRecord.seq == seq
                )
            )
            s.commit()

    def stored_total(self, start: datetime, end: datetime) -> Decimal:
        with self.factory() as s:
            rows = s.scalars(
                select(UsageRecord.quantity).where(
                    UsageRecord.account_id == self.account_id,
                    UsageRecord.recorded_at >= start,
                    UsageRecord.recorded_at < end,
                )
            )
            return sum(rows, Decimal(0))

    def run(self, now: datetime) -> BillingRun:
        return run_periods(self.factory, now, self.settings, tenant_id=self.tenant_id)

    def invoices(self, **params: Any) -> list[dict[str, Any]]:
        return list(self.ok(self.get("/invoices", limit=500, **params))["items"])

    def audit(self) -> dict[str, Any]:
        return dict(self.ok(self.get("/billing/audit")))


def _insert_ignoring_duplicates(session: Session) -> Any:
    if session.get_bind().dialect.name == "postgresql":
        return postgresql.insert(UsageRecord).on_conflict_do_nothing()
    return sqlite.insert(UsageRecord).on_conflict_do_nothing()


def make_biller(
    factory: sessionmaker[Session], client: TestClient, settings: BillingSettings
) -> Biller:
    """A shop with a subscription from ``T0`` to 2031 on two claimed, activated devices."""
    shop = make_shop(factory)
    ent = shop.grant("subscription", quantity=2, ends_at=datetime(2031, 1, 1, tzinfo=T0.tzinfo))
    devices = []
    for index in range(2):
        device = shop.device(f"B{index}", claimed=True)
        shop.activate(ent, device, T0)
        devices.append(device)
    return Biller(shop, client, settings, ent, devices)


@pytest.fixture
def biller(session_factory: sessionmaker[Session], client: TestClient, app: FastAPI) -> Biller:
    """A fresh tenant billing one account."""
    return make_biller(session_factory, client, app.state.billing_settings)


@pytest.fixture
def other_biller(
    session_factory: sessionmaker[Session], client: TestClient, app: FastAPI
) -> Biller:
    """A second, unrelated tenant billing its own account."""
    return make_biller(session_factory, client, app.state.billing_settings)
