"""Per-device manifest state: the latest signed manifest and its delivery."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, Integer, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from hub.db.base import Base, UTCDateTime

DELIVERY_STATES = ("pending", "delivered", "acknowledged", "failed")


class DeviceManifest(Base):
    """The latest manifest issued to a device (older ones are superseded, not kept).

    ``delivery_state``: ``pending`` (issued, not yet confirmed by the broker),
    ``delivered`` (the broker acknowledged the QoS 1 publish), ``acknowledged``
    (the device verified and stored it), ``failed`` (the device rejected it, or
    it stayed unacknowledged through every retry).
    """

    __tablename__ = "device_manifests"
    __table_args__ = (
        # Jobs look for leases running out and deliveries left unacknowledged.
        Index(None, "not_after"),
        Index(None, "delivery_state", "updated_at"),
    )

    device_id: Mapped[str] = mapped_column(
        ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True
    )
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    seq: Mapped[int] = mapped_column(Integer)
    issued_at: Mapped[datetime] = mapped_column(UTCDateTime())
    not_after: Mapped[datetime] = mapped_column(UTCDateTime())
    features_hash: Mapped[str] = mapped_column(String(64))
    kid: Mapped[str] = mapped_column(String(64))
    # The key of the last manifest the device acknowledged: which key rotations
    # it still needs before a manifest signed by the current key.
    acknowledged_kid: Mapped[str | None] = mapped_column(String(64))
    # The signed manifest the device last acknowledged: what it is running until
    # a newer one is acknowledged (the leakage report compares it with its rights).
    acknowledged_signed: Mapped[bytes | None] = mapped_column(LargeBinary)
    signed: Mapped[bytes] = mapped_column(LargeBinary)
    delivery_state: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    acknowledged_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    failure: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
