"""Catalogue tables: firmware packages and what each device runs.

A package's payload lives in the blob store under ``blob_key``; the row holds
its size, SHA-256, chunking and the signed SUIT envelope built at upload. The
SUIT sequence number is unique and increasing per device class, as are the
semantic versions: the catalogue never accepts a downgrade.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from hub.db.base import Base, UTCDateTime


def _tenant_fk() -> ForeignKey:
    return ForeignKey("tenants.id", ondelete="CASCADE")


class FirmwarePackage(Base):
    """One firmware release for one device class."""

    __tablename__ = "firmware_packages"
    __table_args__ = (
        UniqueConstraint("device_class_id", "version"),
        UniqueConstraint("device_class_id", "sequence"),
        Index(None, "tenant_id", "device_class_id"),
        CheckConstraint("size > 0", name="size"),
        CheckConstraint("sequence >= 1", name="sequence"),
        CheckConstraint("required_feature IS NULL OR required_product_id IS NOT NULL", name="gate"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(_tenant_fk())
    device_class_id: Mapped[str] = mapped_column(
        ForeignKey("device_classes.id", ondelete="CASCADE")
    )
    version: Mapped[str] = mapped_column(String(64))
    sequence: Mapped[int] = mapped_column(BigInteger)
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    chunk_size: Mapped[int] = mapped_column(Integer)
    chunk_count: Mapped[int] = mapped_column(Integer)
    blob_key: Mapped[str] = mapped_column(String(128))
    envelope: Mapped[bytes] = mapped_column(LargeBinary)
    manifest_digest: Mapped[str] = mapped_column(String(64))
    release_notes: Mapped[str] = mapped_column(Text, default="")
    required_product_id: Mapped[str | None] = mapped_column(ForeignKey("products.id"))
    required_feature: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class DeviceFirmware(Base):
    """What a device runs, as it last told the hub (query) or confirmed (report)."""

    __tablename__ = "device_firmware"

    device_id: Mapped[str] = mapped_column(
        ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True
    )
    tenant_id: Mapped[str] = mapped_column(_tenant_fk(), index=True)
    installed_seq: Mapped[int] = mapped_column(BigInteger, default=0)
    installed_version: Mapped[str | None] = mapped_column(String(64))
    package_id: Mapped[str | None] = mapped_column(
        ForeignKey("firmware_packages.id", ondelete="SET NULL")
    )
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
