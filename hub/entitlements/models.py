"""Entitlement tables: accounts, features, entitlements, activations, seats, history.

Customer accounts, product features, entitlements, activations, trial uses,
floating-seat leases and the per-account/per-device history.

Every row carries ``tenant_id`` and every tenant-scoped query filters on it.
Two partial unique indexes carry invariants the services rely on: a device
has at most one open activation per entitlement, and at most one unreleased
seat per entitlement. ``trial_uses`` is never deleted: its primary key makes
"one trial per device and product, ever" a database fact.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from hub.db.base import Base, UTCDateTime

FEATURE_KINDS = ("flag", "limit", "metered")
PERIODS = ("day", "month")
OVERAGE_POLICIES = ("block", "allow", "flag")
LICENSE_MODELS = ("perpetual", "subscription", "trial", "node_locked", "floating", "metered")
STATUSES = ("active", "suspended", "revoked", "expired")


def _tenant_fk() -> ForeignKey:
    return ForeignKey("tenants.id", ondelete="CASCADE")


def _in(column: str, values: tuple[str, ...]) -> str:
    quoted = ", ".join(f"'{v}'" for v in values)
    return f"{column} IN ({quoted})"


class CustomerAccount(Base):
    """A manufacturer's customer: the holder of entitlements."""

    __tablename__ = "customer_accounts"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(_tenant_fk())
    name: Mapped[str] = mapped_column(String(200))
    external_ref: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Feature(Base):
    """A feature of a product: a flag, a numeric limit or a metered capability."""

    __tablename__ = "features"
    __table_args__ = (
        UniqueConstraint("product_id", "key"),
        CheckConstraint(_in("kind", FEATURE_KINDS), name="kind"),
        CheckConstraint(f"period IS NULL OR {_in('period', PERIODS)}", name="period"),
        CheckConstraint(f"overage IS NULL OR {_in('overage', OVERAGE_POLICIES)}", name="overage"),
        Index(None, "tenant_id", "product_id"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(_tenant_fk())
    product_id: Mapped[str] = mapped_column(ForeignKey("products.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))
    default_limit: Mapped[int | None] = mapped_column(Integer)
    cap_per_period: Mapped[int | None] = mapped_column(Integer)
    period: Mapped[str | None] = mapped_column(String(8))
    overage: Mapped[str | None] = mapped_column(String(8))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Entitlement(Base):
    """An account's right to a product under one license model and term."""

    __tablename__ = "entitlements"
    __table_args__ = (
        CheckConstraint(_in("license_model", LICENSE_MODELS), name="license_model"),
        CheckConstraint(_in("status", STATUSES), name="status"),
        CheckConstraint("quantity >= 1", name="quantity"),
        CheckConstraint("grace_seconds >= 0", name="grace_seconds"),
        CheckConstraint("ends_at IS NULL OR ends_at > starts_at", name="term"),
        Index(None, "tenant_id", "account_id"),
        Index(None, "tenant_id", "product_id"),
        # The expiry job scans by status and end.
        Index(None, "status", "ends_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(_tenant_fk())
    account_id: Mapped[str] = mapped_column(ForeignKey("customer_accounts.id", ondelete="CASCADE"))
    product_id: Mapped[str] = mapped_column(ForeignKey("products.id", ondelete="CASCADE"))
    license_model: Mapped[str] = mapped_column(String(16))
    quantity: Mapped[int] = mapped_column(Integer)
    starts_at: Mapped[datetime] = mapped_column(UTCDateTime())
    ends_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    grace_seconds: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[str] = mapped_column(String(16), default="active")
    feature_overrides: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


_OPEN_ACTIVATION = text("deactivated_at IS NULL")


class Activation(Base):
    """An entitlement bound to a device; open while ``deactivated_at`` is null.

    ``temporary_until`` marks a rehost's temporary license: it counts only
    until then unless confirmed (which clears it).
    """

    __tablename__ = "activations"
    __table_args__ = (
        Index(
            "uq_activations_open",
            "entitlement_id",
            "device_id",
            unique=True,
            sqlite_where=_OPEN_ACTIVATION,
            postgresql_where=_OPEN_ACTIVATION,
        ),
        Index(None, "device_id", "deactivated_at"),
        Index(None, "tenant_id", "entitlement_id"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(_tenant_fk())
    entitlement_id: Mapped[str] = mapped_column(ForeignKey("entitlements.id", ondelete="CASCADE"))
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    activated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    deactivated_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    temporary_until: Mapped[datetime | None] = mapped_column(UTCDateTime())


class TrialUse(Base):
    """A device has had a trial of a product; kept forever."""

    __tablename__ = "trial_uses"

    device_id: Mapped[str] = mapped_column(
        ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True
    )
    product_id: Mapped[str] = mapped_column(
        ForeignKey("products.id", ondelete="CASCADE"), primary_key=True
    )
    tenant_id: Mapped[str] = mapped_column(_tenant_fk(), index=True)
    entitlement_id: Mapped[str] = mapped_column(ForeignKey("entitlements.id", ondelete="CASCADE"))
    used_at: Mapped[datetime] = mapped_column(UTCDateTime())


_OPEN_SEAT = text("released_at IS NULL")


class SeatLease(Base):
    """A floating seat held by a device; open while ``released_at`` is null."""

    __tablename__ = "seat_leases"
    __table_args__ = (
        Index(
            "uq_seat_leases_open",
            "entitlement_id",
            "device_id",
            unique=True,
            sqlite_where=_OPEN_SEAT,
            postgresql_where=_OPEN_SEAT,
        ),
        Index(None, "device_id", "released_at"),
        # The heartbeat sweeper looks for open seats not refreshed recently.
        Index(None, "released_at", "heartbeat_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(_tenant_fk())
    entitlement_id: Mapped[str] = mapped_column(ForeignKey("entitlements.id", ondelete="CASCADE"))
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    acquired_at: Mapped[datetime] = mapped_column(UTCDateTime())
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime())
    released_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    release_reason: Mapped[str | None] = mapped_column(String(32))


class EntitlementEvent(Base):
    """One entry of the entitlement history: who did what, when and why."""

    __tablename__ = "entitlement_events"
    __table_args__ = (
        Index(None, "tenant_id", "account_id", "at"),
        Index(None, "tenant_id", "device_id", "at"),
        Index(None, "tenant_id", "entitlement_id", "at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(_tenant_fk())
    account_id: Mapped[str] = mapped_column(String(36))
    entitlement_id: Mapped[str | None] = mapped_column(String(36))
    device_id: Mapped[str | None] = mapped_column(String(32))
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    actor: Mapped[str] = mapped_column(String(100))
    action: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(Text, default="")
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSON)
