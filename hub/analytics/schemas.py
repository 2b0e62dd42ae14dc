"""Response bodies of the analytics API."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

LeakKind = Literal["not_entitled", "limit", "cap"]
UnusedReason = Literal["no_activation", "no_seat"]


class DurationStats(BaseModel):
    """Summary of a set of durations, in seconds (``None`` when the set is empty)."""

    count: int
    min: float | None = None
    p50: float | None = None
    p90: float | None = None
    max: float | None = None
    mean: float | None = None


class ProductActivationTimes(BaseModel):
    """Time from device registration to its first activation on one product."""

    product_id: str
    sku: str
    name: str
    seconds: DurationStats


class TimeToActivateReport(BaseModel):
    """Per-product time-to-activate distributions.

    ``method`` names how percentiles are computed (see
    :func:`hub.analytics.service.percentile`).
    """

    at: datetime
    since: datetime | None
    method: str
    products: list[ProductActivationTimes]


class LicenseModelUsage(BaseModel):
    """Entitlements of one license model by status, and the devices they cover now."""

    license_model: str
    total: int
    by_status: dict[str, int]
    devices_covered: int


class LicenseModelsReport(BaseModel):
    """Every license model (zero rows included), and the tenant's covered devices."""

    at: datetime
    models: list[LicenseModelUsage]
    devices_covered: int = Field(description="distinct devices covered by any model")


class UnusedEntitlement(BaseModel):
    """An active entitlement nobody is using (churn risk)."""

    entitlement_id: str
    account_id: str
    account_name: str
    product_id: str
    sku: str
    license_model: str
    quantity: int
    created_at: datetime
    unused_since: datetime
    days_unused: int
    reason: UnusedReason


class FeatureState(BaseModel):
    """A feature as held in a manifest or as currently entitled."""

    enabled: bool
    limit: int | None = None
    cap: int | None = None


class LeakFinding(BaseModel):
    """One feature a device's acknowledged manifest grants beyond its entitlement."""

    device_id: str
    serial: str
    feature: str
    kind: LeakKind
    held: FeatureState
    entitled: FeatureState
    manifest_seq: int
    issued_at: datetime
    acknowledged_at: datetime | None
    not_after: datetime


class ManifestSummary(BaseModel):
    """The tenant's current manifests by delivery state.

    ``acknowledged_current`` were checked for leakage; ``acknowledged_expired``
    are past their lease (the device has fallen back to safe defaults).
    ``unacknowledged`` counts ``pending``, ``delivered`` and ``failed``: those
    devices still run on an earlier manifest the hub no longer keeps, so they
    cannot be checked and are reported here instead.
    """

    acknowledged_current: int
    acknowledged_expired: int
    unacknowledged: dict[str, int]


class LeakageReport(BaseModel):
    """Devices that may use more than they are entitled to (should be empty)."""

    at: datetime
    devices: int
    findings: list[LeakFinding]
    manifests: ManifestSummary
