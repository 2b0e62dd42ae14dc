"""Usage fixtures: a shop with metered features, claimed activated devices, an ingest driver.

The shop comes from the analytics fixtures (product ``GW`` with the metered
feature ``api.calls``: cap 1,000 per month); this adds ``storage`` (metered,
cap 50 per day) and ``energy`` (metered, cap 10 per month) and a perpetual
entitlement of account Acme activated on two claimed devices at ``T0``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from hub.entitlements import service as ent_service
from hub.entitlements.schemas import FeatureCreate
from hub.telemetry.ingest import UsageHandler
from hub.telemetry.models import UsageRecord
from hub.telemetry.policy import UsagePolicy
from protocols.messages import Message, decode_message
from protocols.usage_messages import RawUsageRecord, UsageAck, UsageBatch
from tests.hub.analytics.conftest import T0, Shop, make_shop

TS0 = int(T0.timestamp())


def rec(
    seq: int,
    quantity: Any = 1,
    *,
    meter: Any = "api.calls",
    ts: Any = None,
    dim: Any = None,
    epoch: int = 1,
) -> RawUsageRecord:
    """A wire record (``ts`` defaults to ``T0`` + ``seq`` seconds)."""
    items: tuple[Any, ...] = (epoch, seq, meter, quantity, TS0 + 60 + seq if ts is None else ts)
    return RawUsageRecord(items if dim is None else (*items, dim))


@dataclass
class UsageShop:
    """A shop whose devices send usage through a real :class:`UsageHandler`."""

    shop: Shop
    entitlement_id: str
    devices: list[str]
    handler: UsageHandler = field(default_factory=UsageHandler)

    @property
    def factory(self) -> sessionmaker[Session]:
        return self.shop.factory

    @property
    def tenant_id(self) -> str:
        return self.shop.tenant_id

    def deliver(
        self, messages: Sequence[tuple[str, Message]], now: datetime | None = None
    ) -> list[tuple[str, bytes]]:
        """One inbound batch through the handler, committed; returns (topic, payload) replies."""
        with self.factory() as s:
            replies = self.handler.handle(s, messages, now or T0 + timedelta(hours=1))
            s.commit()
        return [(r.topic, r.payload) for r in replies]

    def send(
        self, device: str, records: Iterable[RawUsageRecord], now: datetime | None = None
    ) -> list[str]:
        """One message of ``records`` from ``device``; returns the ack's codes in order."""
        records = tuple(records)
        (reply,) = self.deliver([(device, UsageBatch(records=records))], now)
        assert reply[0] == f"d/{device}/down/usage_ack"
        ack = decode_message(reply[1])
        assert isinstance(ack, UsageAck)
        assert [r.key for r in ack.results] == [(r.boot_epoch, r.seq) for r in records]
        return [r.code for r in ack.results]

    def total(self, device: str | None = None, meter: str = "api.calls") -> Decimal:
        """Sum of the stored quantities (all of the tenant's, or one device's)."""
        with self.factory() as s:
            query = select(func.coalesce(func.sum(UsageRecord.quantity), 0)).where(
                UsageRecord.tenant_id == self.tenant_id, UsageRecord.meter == meter
            )
            if device is not None:
                query = query.where(UsageRecord.device_id == device)
            return Decimal(s.scalar(query) or 0)

    def records(self, device: str) -> list[UsageRecord]:
        with self.factory() as s:
            rows = list(
                s.scalars(
                    select(UsageRecord)
                    .where(UsageRecord.device_id == device)
                    .order_by(UsageRecord.boot_epoch, UsageRecord.seq)
                )
            )
            s.expunge_all()
            return rows


def make_usage_shop(factory: sessionmaker[Session], devices: int = 2) -> UsageShop:
    """A shop with three metered features and ``devices`` activated claimed devices."""
    shop = make_shop(factory)
    with shop.tx() as s:
        for body in (
            FeatureCreate(key="storage", kind="metered", cap_per_period=50, period="day"),
            FeatureCreate(key="energy", kind="metered", cap_per_period=10, period="month"),
        ):
            ent_service.create_feature(
                s, tenant_id=shop.tenant_id, actor="test", now=T0,
                product_id=shop.product_id, data=body,
            )  # fmt: skip
    ent = shop.grant("perpetual", quantity=max(devices, 1))
    ids = []
    for index in range(devices):
        device = shop.device(f"U{index}", claimed=True)
        shop.activate(ent, device, T0)
        ids.append(device)
    return UsageShop(shop, ent, ids)


@pytest.fixture
def usage(session_factory: sessionmaker[Session]) -> UsageShop:
    """A fresh usage shop (two devices)."""
    return make_usage_shop(session_factory)


def strict_policy() -> UsagePolicy:
    """A policy with a tight window, for quarantine tests."""
    return UsagePolicy(future_skew_seconds=300, max_age_seconds=7 * 86_400)
