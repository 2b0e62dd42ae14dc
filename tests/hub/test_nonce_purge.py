"""Claim nonces are kept exactly as long as a replay could still pass the clock check."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, select

from hub.registry import service
from hub.registry.claims import purge_nonces
from hub.registry.models import ClaimNonce
from hub.registry.schemas import DeviceClassCreate, DeviceCreate
from hub.scheduler import purge_claim_nonces


def _device(session_factory, tenant, now) -> str:
    with session_factory() as s:
        cls = service.create_device_class(
            s,
            tenant_id=tenant.tenant_id,
            actor="cli",
            now=now,
            data=DeviceClassCreate(
                name="c",
                vendor_id="fa6b4a53-d5ad-5fdf-be9d-e663e4d41ffe",
                class_id="1492af14-2569-5e48-bf42-9b2d51f2ab45",
            ),
        )
        device = service.create_device(
            s,
            tenant_id=tenant.tenant_id,
            actor="cli",
            now=now,
            data=DeviceCreate(serial="NP-1", device_class_id=cls.id),
        )
        s.commit()
        return device.id


def _count(session_factory, device_id: str) -> int:
    with session_factory() as s:
        return s.scalar(
            select(func.count()).select_from(ClaimNonce).where(ClaimNonce.device_id == device_id)
        )


def test_only_nonces_older_than_twice_the_window_are_forgotten(session_factory, tenant, clock):
    device_id = _device(session_factory, tenant, clock.now)
    with session_factory() as s:
        for age in (0, 599, 600, 601, 5000):
            service.remember_nonce(
                s, f"{device_id}-{age}", device_id, clock.now - timedelta(seconds=age)
            )
        s.commit()
    with session_factory() as s:
        assert purge_nonces(s, now=clock.now, skew_seconds=300) == 2
        s.commit()
    assert _count(session_factory, device_id) == 3
    clock.advance(seconds=10_000)
    assert purge_claim_nonces(session_factory, clock, 300) == 3
    assert _count(session_factory, device_id) == 0
