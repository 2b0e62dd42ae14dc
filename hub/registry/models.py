"""Registry tables: tenants, API keys, products, device classes, devices, claims.

Every tenant-owned row carries ``tenant_id`` and every tenant-scoped query
filters on it; the indexes below follow those filters.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    ForeignKey,
    Index,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import Mapped, mapped_column

from hub.db.base import Base, UTCDateTime

ROLES = ("admin", "operator", "viewer")
DEVICE_STATUSES = ("registered", "claimed", "disabled")


def _tenant_fk() -> ForeignKey:
    return ForeignKey("tenants.id", ondelete="CASCADE")


def _in(column: str, values: tuple[str, ...]) -> str:
    quoted = ", ".join(f"'{v}'" for v in values)
    return f"{column} IN ({quoted})"


class Tenant(Base):
    """A manufacturer; the unit of isolation."""

    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class ApiKey(Base):
    """A REST API key; only the SHA-256 of its secret part is stored."""

    __tablename__ = "api_keys"
    __table_args__ = (CheckConstraint(_in("role", ROLES), name="role"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(_tenant_fk(), index=True)
    name: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(16))
    secret_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class Product(Base):
    """A sellable product line, identified by SKU within its tenant."""

    __tablename__ = "products"
    __table_args__ = (UniqueConstraint("tenant_id", "sku"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(_tenant_fk())
    sku: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class DeviceClass(Base):
    """A hardware class (SUIT vendor/class identifiers) devices belong to."""

    __tablename__ = "device_classes"
    __table_args__ = (UniqueConstraint("tenant_id", "vendor_id", "class_id"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(_tenant_fk())
    name: Mapped[str] = mapped_column(String(200))
    vendor_id: Mapped[str] = mapped_column(String(36))
    class_id: Mapped[str] = mapped_column(String(36))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Device(Base):
    """A physical device; ``id`` is hub-issued and doubles as MQTT username."""

    __tablename__ = "devices"
    __table_args__ = (
        UniqueConstraint("tenant_id", "serial"),
        CheckConstraint(_in("status", DEVICE_STATUSES), name="status"),
        Index(None, "tenant_id", "status"),
        Index(None, "tenant_id", "device_class_id"),
        # The presence sweeper looks for online devices not seen recently.
        Index(None, "online", "last_seen_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(_tenant_fk())
    serial: Mapped[str] = mapped_column(String(64))
    device_class_id: Mapped[str] = mapped_column(ForeignKey("device_classes.id"))
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    public_key: Mapped[bytes | None] = mapped_column(LargeBinary)
    public_key_fingerprint: Mapped[str | None] = mapped_column(String(64), unique=True)
    status: Mapped[str] = mapped_column(String(16), default="registered")
    claimed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    online: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    last_seen_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_connect_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class ClaimBatch(Base):
    """A claim token shared by a batch of devices; only its hash is stored."""

    __tablename__ = "claim_batches"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(_tenant_fk(), index=True)
    name: Mapped[str] = mapped_column(String(200))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class ClaimBatchDevice(Base):
    """Membership of a device in a claim batch."""

    __tablename__ = "claim_batch_devices"

    batch_id: Mapped[str] = mapped_column(
        ForeignKey("claim_batches.id", ondelete="CASCADE"), primary_key=True
    )
    device_id: Mapped[str] = mapped_column(
        ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True, index=True
    )


class DeviceCredential(Base):
    """A device's MQTT login; the password is kept in Mosquitto ``$7$`` form."""

    __tablename__ = "device_credentials"

    device_id: Mapped[str] = mapped_column(
        ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True
    )
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class ClaimNonce(Base):
    """A claim nonce already seen, kept to refuse replays until it expires."""

    __tablename__ = "claim_nonces"

    nonce: Mapped[str] = mapped_column(String(128), primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), index=True)
    seen_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
