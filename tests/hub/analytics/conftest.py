"""Analytics fixtures: a small fleet built directly through the services.

Every step takes the instant it happens at, so tests control registration,
activation, seat and manifest times exactly. Each step commits on its own.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from hub.entitlements import activations, seats
from hub.entitlements import service as ent_service
from hub.entitlements.schemas import (
    AccountCreate,
    EntitlementCreate,
    EntitlementUpdate,
    FeatureCreate,
)
from hub.manifests import service as manifests
from hub.manifests.service import ManifestPolicy
from hub.registry import service as registry
from hub.registry.models import Device
from hub.registry.schemas import DeviceClassCreate, DeviceCreate, ProductCreate
from protocols.messages import ManifestAck
from provisioning.signer import Ed25519Signer
from tests.hub.conftest import Clock, TenantKeys, make_tenant

T0 = datetime(2030, 1, 1, 12, tzinfo=UTC)
SIGNER = Ed25519Signer.generate()
POLICY = ManifestPolicy(kid=SIGNER.kid, sign=SIGNER.sign)
FEATURES = (
    FeatureCreate(key="vpn", kind="flag"),
    FeatureCreate(key="users", kind="limit", default_limit=5),
    FeatureCreate(key="api.calls", kind="metered", cap_per_period=1000, period="month"),
)


def at(**delta: float) -> datetime:
    """``T0`` plus a delta (``at(days=3)``)."""
    return T0 + timedelta(**delta)


@dataclass
class Shop:
    """One tenant's catalogue and fleet, changed through the services."""

    factory: sessionmaker[Session]
    tenant: TenantKeys
    class_id: str = ""
    product_id: str = ""
    account_id: str = ""

    @property
    def tenant_id(self) -> str:
        return self.tenant.tenant_id

    @contextmanager
    def tx(self) -> Iterator[Session]:
        with self.factory() as s:
            yield s
            s.commit()

    def _who(self, now: datetime) -> dict[str, Any]:
        return {"tenant_id": self.tenant_id, "actor": "test", "now": now}

    def product(self, sku: str, now: datetime = T0) -> str:
        with self.tx() as s:
            product = registry.create_product(
                s, **self._who(now), data=ProductCreate(sku=sku, name=f"{sku} product")
            )
            for feature in FEATURES:
                ent_service.create_feature(s, **self._who(now), product_id=product.id, data=feature)
            return product.id

    def account(self, name: str, now: datetime = T0) -> str:
        with self.tx() as s:
            return ent_service.create_account(s, **self._who(now), data=AccountCreate(name=name)).id

    def device(self, serial: str, now: datetime = T0, *, claimed: bool = False) -> str:
        with self.tx() as s:
            device = registry.create_device(
                s, **self._who(now), data=DeviceCreate(serial=serial, device_class_id=self.class_id)
            )
            if claimed:
                device.status = "claimed"
            return device.id

    def grant(self, model: str, now: datetime = T0, **fields: Any) -> str:
        data = EntitlementCreate(
            account_id=fields.pop("account_id", self.account_id),
            product_id=fields.pop("product_id", self.product_id),
            license_model=model,
            **fields,
        )
        with self.tx() as s:
            return ent_service.create_entitlement(s, **self._who(now), data=data).value.id

    def activate(self, ent_id: str, device_id: str, now: datetime) -> None:
        with self.tx() as s:
            activations.activate(s, **self._who(now), entitlement_id=ent_id, device_id=device_id)

    def deactivate(self, ent_id: str, device_id: str, now: datetime) -> None:
        with self.tx() as s:
            activations.deactivate(s, **self._who(now), entitlement_id=ent_id, device_id=device_id)

    def revoke(self, ent_id: str, now: datetime) -> None:
        with self.tx() as s:
            ent_service.revoke(s, **self._who(now), entitlement_id=ent_id)

    def suspend(self, ent_id: str, now: datetime) -> None:
        with self.tx() as s:
            ent_service.suspend(s, **self._who(now), entitlement_id=ent_id)

    def override(self, ent_id: str, now: datetime, overrides: dict[str, Any]) -> None:
        data = EntitlementUpdate(feature_overrides=overrides)
        with self.tx() as s:
            ent_service.update_entitlement(s, **self._who(now), entitlement_id=ent_id, data=data)

    def checkout(self, device_id: str, now: datetime, product_id: str | None = None) -> None:
        with self.tx() as s:
            result = seats.checkout_seat(
                s, device_id=device_id, product_id=product_id or self.product_id, now=now
            )
            assert result.granted, result.reason

    def release(self, device_id: str, now: datetime, product_id: str | None = None) -> None:
        with self.tx() as s:
            seats.release_seat(
                s, device_id=device_id, product_id=product_id or self.product_id, now=now
            )

    def issue(self, device_id: str, now: datetime) -> int:
        with self.tx() as s:
            assert manifests.issue(s, [device_id], now=now, policy=POLICY)
            return manifests.current_seq(s, device_id)

    def delivered(self, device_id: str, now: datetime) -> None:
        with self.tx() as s:
            manifests.mark_delivered(s, [device_id], now=now)

    def ack(self, device_id: str, seq: int, now: datetime, status: str = "accepted") -> None:
        with self.tx() as s:
            manifests.handle_ack(
                s,
                device_id=device_id,
                ack=ManifestAck(
                    seq=seq, status=status, reason="bad" if status == "rejected" else None
                ),
                now=now,
            )

    def product_id_of(self, ent_id: str) -> str:
        with self.factory() as s:
            return ent_service.get_entitlement(s, self.tenant_id, ent_id).product_id

    def disable(self, device_id: str) -> None:
        with self.tx() as s:
            s.get_one(Device, device_id).status = "disabled"


def make_shop(factory: sessionmaker[Session], now: datetime = T0) -> Shop:
    """A tenant with a device class, product ``GW`` (vpn, users, api.calls) and account Acme."""
    shop = Shop(factory, make_tenant(factory, now))
    with shop.tx() as s:
        shop.class_id = registry.create_device_class(
            s,
            **shop._who(now),
            data=DeviceClassCreate(
                name="gw",
                vendor_id=uuid.uuid4(),
                class_id=uuid.uuid4(),
            ),
        ).id
    shop.product_id = shop.product("GW", now)
    shop.account_id = shop.account("Acme", now)
    return shop


@pytest.fixture
def shop(session_factory: sessionmaker[Session], clock: Clock) -> Shop:
    """A fresh tenant's shop (the API clock starts at ``T0``)."""
    assert clock.now == T0
    return make_shop(session_factory)


@pytest.fixture
def other_shop(session_factory: sessionmaker[Session]) -> Shop:
    """An unrelated tenant's shop."""
    return make_shop(session_factory)
