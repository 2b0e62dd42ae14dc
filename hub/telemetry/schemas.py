"""Request and response bodies of the usage and meters API.

Quantities and aggregate values travel as **decimal strings** (``"7.3"``,
``"1000"``), never JSON numbers, so no float ever touches them; they are exact
to six decimals.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, StringConstraints

from hub.entitlements.schemas import FeatureKey

Aggregation = Literal["sum", "count", "max", "unique_count", "latest"]
TimeBasis = Literal["recorded", "received"]
MeterName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._-]{1,64}$")]


def decimal_text(value: Decimal) -> str:
    """A decimal as plain text without exponent or trailing zeros (``7.300000`` -> ``7.3``)."""
    text = format(value.normalize(), "f")
    return text


DecimalText = Annotated[Decimal, PlainSerializer(decimal_text, return_type=str, when_used="always")]


class _Public(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class UsageTotalPublic(BaseModel):
    """One group of an aggregation."""

    keys: dict[str, str | None]
    value: DecimalText
    records: int


class UsageTotalsPublic(BaseModel):
    """Usage per group in ``[start, end)``."""

    start: datetime
    end: datetime
    by: TimeBasis
    aggregation: Aggregation
    group_by: list[str]
    items: list[UsageTotalPublic]


class UsageRecordPublic(_Public):
    """One stored usage record."""

    id: int
    device_id: str
    boot_epoch: int
    seq: int
    meter: str
    quantity: DecimalText
    dimension: str | None
    recorded_at: datetime
    received_at: datetime
    account_id: str | None
    product_id: str | None
    entitlement_id: str | None
    over_cap: bool


class UsageGapPublic(_Public):
    """A run of sequences the hub never received (open: possible lost usage)."""

    id: int
    device_id: str
    boot_epoch: int
    first_missing_seq: int
    last_missing_seq: int
    missing: int
    detected_at: datetime
    closed_at: datetime | None


class UsageConflictPublic(_Public):
    """A record offered under a stored key with different content (not billed)."""

    id: int
    device_id: str
    boot_epoch: int
    seq: int
    meter: str
    quantity: DecimalText
    dimension: str | None
    recorded_at: datetime
    received_at: datetime


class UsageQuarantinePublic(UsageConflictPublic):
    """A record whose timestamp was outside the skew window (kept, not billed)."""

    reason: str


class UsageRejectionPublic(_Public):
    """A record refused as invalid: its key and why."""

    id: int
    device_id: str
    boot_epoch: int
    seq: int
    reason: str
    received_at: datetime


class LeakagePublic(BaseModel):
    """Revenue leakage in ``[start, end)``: usage no entitlement covers, usage over its cap."""

    start: datetime
    end: datetime
    group_by: list[str]
    uncovered: list[UsageTotalPublic]
    over_cap: list[UsageTotalPublic]
    uncovered_total: DecimalText
    over_cap_total: DecimalText


class MeterCreate(BaseModel):
    """A new billable metric: one aggregation of one metered feature's usage."""

    model_config = ConfigDict(extra="forbid")

    name: MeterName
    feature_key: FeatureKey
    aggregation: Aggregation
    description: str = Field(default="", max_length=2000)


class MeterPublic(_Public):
    """A billable metric."""

    id: str
    name: str
    feature_key: str
    aggregation: Aggregation
    description: str
    created_at: datetime


class MeterValuePublic(BaseModel):
    """A meter evaluated per group in ``[start, end)``."""

    meter: MeterPublic
    start: datetime
    end: datetime
    by: TimeBasis
    group_by: list[str]
    items: list[UsageTotalPublic]
