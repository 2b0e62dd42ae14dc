"""Usage tables: accepted records, conflicts, quarantine, rejections, gaps, meters.

``usage_records`` holds one row per accepted usage record under the permanent
idempotency key ``(device_id, boot_epoch, seq)``; ingestion never updates or
deletes it. Everything a record can turn into besides "stored" has its own
table: a different content under a stored key (``usage_conflicts``), a
timestamp outside the skew window (``usage_quarantine``), an invalid record
(``usage_rejections``). ``usage_sequences`` keeps each device's highest
sequence per boot epoch so ``usage_gaps`` (possible lost usage) is maintained
incrementally, and ``usage_period_totals`` keeps each device's covered usage
per metered feature and cap period so over-cap records are marked without
re-reading the period. ``meters`` are the billable metrics priced by billing.

Quantities are :class:`Quantity`: ``Decimal`` in Python, ``NUMERIC(24, 6)``
on PostgreSQL and integer micro-units on SQLite (whose NUMERIC is a float),
so sums are exact on both backends.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.types import TypeDecorator, TypeEngine

from hub.db.base import Base, UTCDateTime

AGGREGATIONS = ("sum", "count", "max", "unique_count", "latest")
QUARANTINE_REASONS = ("future", "too_old")
SCALE = 6
MICRO = 1_000_000  # 10**SCALE
# The integer id on SQLite must be INTEGER to alias ROWID (autoincrement).
BigId = BigInteger().with_variant(Integer(), "sqlite")


class Quantity(TypeDecorator[Decimal]):
    """An exact quantity with six decimals.

    PostgreSQL stores ``NUMERIC(24, 6)``. SQLite has no exact decimal type
    (SQLAlchemy would bind floats), so there the column is a ``BIGINT`` of
    micro-units (value x 10^6). Values are quantized to six decimals before
    they get here (see :func:`hub.telemetry.records.to_quantity`).
    """

    impl = Numeric(24, SCALE)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        """``BIGINT`` micro-units on SQLite, ``NUMERIC(24, 6)`` elsewhere."""
        if dialect.name == "sqlite":
            return dialect.type_descriptor(BigInteger())
        return dialect.type_descriptor(Numeric(24, SCALE, asdecimal=True))

    def process_bind_param(self, value: Decimal | None, dialect: Dialect) -> Any:
        """Micro-units (int) on SQLite; the Decimal itself elsewhere."""
        if value is None:
            return None
        if dialect.name == "sqlite":
            return int(value.scaleb(SCALE))
        return value

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        """Always a ``Decimal`` with six decimals."""
        if value is None:
            return None
        if dialect.name == "sqlite":
            return Decimal(int(value)).scaleb(-SCALE)
        return Decimal(value)


def _tenant_fk() -> ForeignKey:
    return ForeignKey("tenants.id", ondelete="CASCADE")


def _in(column: str, values: tuple[str, ...]) -> str:
    quoted = ", ".join(f"'{v}'" for v in values)
    return f"{column} IN ({quoted})"


class UsageRecord(Base):
    """One accepted usage record; the idempotency key is unique forever."""

    __tablename__ = "usage_records"
    __table_args__ = (
        UniqueConstraint("device_id", "boot_epoch", "seq"),
        # No (tenant_id, device_id, recorded_at) index: one random page write per
        # record at ingestion; device filters use the unique key's device_id
        # prefix (migration 0007_usage_ingest).
        Index(None, "tenant_id", "account_id", "meter", "recorded_at"),
        Index(None, "received_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(_tenant_fk())
    device_id: Mapped[str] = mapped_column(String(64))
    boot_epoch: Mapped[int] = mapped_column(BigInteger)
    seq: Mapped[int] = mapped_column(BigInteger)
    meter: Mapped[str] = mapped_column(String(64))
    quantity: Mapped[Decimal] = mapped_column(Quantity())
    dimension: Mapped[str | None] = mapped_column(String(64))
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime())
    received_at: Mapped[datetime] = mapped_column(UTCDateTime())
    account_id: Mapped[str | None] = mapped_column(String(36))
    product_id: Mapped[str | None] = mapped_column(String(36))
    entitlement_id: Mapped[str | None] = mapped_column(String(36))
    over_cap: Mapped[bool] = mapped_column(Boolean, default=False)


class UsageConflict(Base):
    """A record offered under a stored key with different content (the first stays)."""

    __tablename__ = "usage_conflicts"
    __table_args__ = (
        Index(None, "device_id", "boot_epoch", "seq"),
        Index(None, "tenant_id", "received_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(_tenant_fk())
    device_id: Mapped[str] = mapped_column(String(64))
    boot_epoch: Mapped[int] = mapped_column(BigInteger)
    seq: Mapped[int] = mapped_column(BigInteger)
    meter: Mapped[str] = mapped_column(String(64))
    quantity: Mapped[Decimal] = mapped_column(Quantity())
    dimension: Mapped[str | None] = mapped_column(String(64))
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime())
    received_at: Mapped[datetime] = mapped_column(UTCDateTime())


class UsageQuarantine(Base):
    """A record whose timestamp was outside the skew window: kept, counted, not billed."""

    __tablename__ = "usage_quarantine"
    __table_args__ = (
        UniqueConstraint("device_id", "boot_epoch", "seq"),
        CheckConstraint(_in("reason", QUARANTINE_REASONS), name="reason"),
        Index(None, "tenant_id", "received_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(_tenant_fk())
    device_id: Mapped[str] = mapped_column(String(64))
    boot_epoch: Mapped[int] = mapped_column(BigInteger)
    seq: Mapped[int] = mapped_column(BigInteger)
    meter: Mapped[str] = mapped_column(String(64))
    quantity: Mapped[Decimal] = mapped_column(Quantity())
    dimension: Mapped[str | None] = mapped_column(String(64))
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime())
    received_at: Mapped[datetime] = mapped_column(UTCDateTime())
    reason: Mapped[str] = mapped_column(String(16))


class UsageRejection(Base):
    """A record refused as invalid (bad quantity, unknown meter ...): why, not what."""

    __tablename__ = "usage_rejections"
    __table_args__ = (
        UniqueConstraint("device_id", "boot_epoch", "seq"),
        Index(None, "tenant_id", "received_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(_tenant_fk())
    device_id: Mapped[str] = mapped_column(String(64))
    boot_epoch: Mapped[int] = mapped_column(BigInteger)
    seq: Mapped[int] = mapped_column(BigInteger)
    reason: Mapped[str] = mapped_column(String(200))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime())


class UsageSequence(Base):
    """The highest sequence seen per device and boot epoch (gap detection)."""

    __tablename__ = "usage_sequences"
    __table_args__ = (Index(None, "tenant_id"),)

    device_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    boot_epoch: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    tenant_id: Mapped[str] = mapped_column(_tenant_fk())
    high_seq: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class UsageGap(Base):
    """A run of sequences never received: possible lost usage (closed when filled)."""

    __tablename__ = "usage_gaps"
    __table_args__ = (
        CheckConstraint("first_missing_seq <= last_missing_seq", name="range"),
        Index(None, "device_id", "boot_epoch", "closed_at"),
        Index(None, "tenant_id", "closed_at", "detected_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(_tenant_fk())
    device_id: Mapped[str] = mapped_column(String(64))
    boot_epoch: Mapped[int] = mapped_column(BigInteger)
    first_missing_seq: Mapped[int] = mapped_column(BigInteger)
    last_missing_seq: Mapped[int] = mapped_column(BigInteger)
    detected_at: Mapped[datetime] = mapped_column(UTCDateTime())
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    @property
    def missing(self) -> int:
        """How many sequences the gap spans."""
        return self.last_missing_seq - self.first_missing_seq + 1


class UsagePeriodTotal(Base):
    """A device's covered usage of one metered feature in one cap period."""

    __tablename__ = "usage_period_totals"
    __table_args__ = (Index(None, "tenant_id"),)

    device_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    meter: Mapped[str] = mapped_column(String(64), primary_key=True)
    period: Mapped[str] = mapped_column(String(8), primary_key=True)
    period_start: Mapped[datetime] = mapped_column(UTCDateTime(), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(_tenant_fk())
    quantity: Mapped[Decimal] = mapped_column(Quantity())


class Meter(Base):
    """A billable metric: one aggregation of one metered feature's usage."""

    __tablename__ = "meters"
    __table_args__ = (
        UniqueConstraint("tenant_id", "name"),
        CheckConstraint(_in("aggregation", AGGREGATIONS), name="aggregation"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(_tenant_fk())
    name: Mapped[str] = mapped_column(String(64))
    feature_key: Mapped[str] = mapped_column(String(64))
    aggregation: Mapped[str] = mapped_column(String(16))
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
