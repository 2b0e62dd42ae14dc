"""Request and response bodies of the entitlements API (``XCreate/XUpdate/XPublic``).

Shape rules live here (types, ranges, required fields per license model);
rules that need the database (unknown features, quantities in use) live in
the services.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

FeatureKey = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._-]{1,64}$")]
FeatureKind = Literal["flag", "limit", "metered"]
Period = Literal["day", "month"]
Overage = Literal["block", "allow", "flag"]
LicenseModel = Literal["perpetual", "subscription", "trial", "node_locked", "floating", "metered"]
Status = Literal["active", "suspended", "revoked", "expired"]
Name = Annotated[str, Field(min_length=1, max_length=200)]
Reason = Annotated[str, Field(max_length=2000)]

TRIAL_MAX = timedelta(days=30)
SINGLE_DEVICE_MODELS = frozenset({"node_locked", "trial"})
TERM_REQUIRED_MODELS = frozenset({"subscription", "trial"})


class _Public(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---------------------------------------------------------------- accounts


class AccountCreate(_Strict):
    """New customer account (name unique per tenant)."""

    name: Name
    external_ref: str | None = Field(default=None, max_length=200)


class AccountUpdate(_Strict):
    """Account changes; omitted fields stay as they are."""

    name: Name | None = None
    external_ref: str | None = Field(default=None, max_length=200)


class AccountPublic(_Public):
    """A customer account."""

    id: str
    name: str
    external_ref: str | None
    created_at: datetime


# ---------------------------------------------------------------- features


class FeatureCreate(_Strict):
    """New product feature.

    ``limit`` features need ``default_limit``; ``metered`` features need
    ``cap_per_period`` and ``period`` (``overage`` defaults to ``block``);
    fields that do not belong to the kind are refused.
    """

    key: FeatureKey
    kind: FeatureKind
    default_limit: int | None = Field(default=None, ge=0)
    cap_per_period: int | None = Field(default=None, ge=0)
    period: Period | None = None
    overage: Overage | None = None

    @model_validator(mode="after")
    def _fields_fit_kind(self) -> Self:
        metered = (self.cap_per_period, self.period, self.overage)
        if self.kind == "limit" and self.default_limit is None:
            raise ValueError("a limit feature needs default_limit")
        if self.kind != "limit" and self.default_limit is not None:
            raise ValueError("default_limit belongs to limit features only")
        if self.kind == "metered":
            if self.cap_per_period is None or self.period is None:
                raise ValueError("a metered feature needs cap_per_period and period")
            self.overage = self.overage or "block"
        elif any(value is not None for value in metered):
            raise ValueError("cap_per_period, period and overage belong to metered features")
        return self


class FeatureUpdate(_Strict):
    """Feature changes (key and kind are immutable); only fields of its kind apply."""

    default_limit: int | None = Field(default=None, ge=0)
    cap_per_period: int | None = Field(default=None, ge=0)
    period: Period | None = None
    overage: Overage | None = None


class FeaturePublic(_Public):
    """A product feature."""

    id: str
    product_id: str
    key: str
    kind: FeatureKind
    default_limit: int | None
    cap_per_period: int | None
    period: Period | None
    overage: Overage | None
    created_at: datetime


# ---------------------------------------------------------------- entitlements


class FeatureOverride(_Strict):
    """Per-entitlement change of one feature; omitted fields keep the default."""

    enabled: bool | None = None
    limit: int | None = Field(default=None, ge=0)
    cap: int | None = Field(default=None, ge=0)


Overrides = dict[FeatureKey, FeatureOverride]


def check_term(model: str, starts_at: datetime, ends_at: datetime | None) -> None:
    """Validate a term against its license model.

    Raises:
        ValueError: inverted term, missing or forbidden end, trial too long.
    """
    if ends_at is not None and ends_at <= starts_at:
        raise ValueError("ends_at must be after starts_at")
    if model in TERM_REQUIRED_MODELS and ends_at is None:
        raise ValueError(f"a {model} entitlement needs ends_at")
    if model == "perpetual" and ends_at is not None:
        raise ValueError("a perpetual entitlement has no ends_at")
    if model == "trial" and ends_at is not None and ends_at - starts_at > TRIAL_MAX:
        raise ValueError(f"a trial lasts at most {TRIAL_MAX.days} days")


class EntitlementCreate(_Strict):
    """New entitlement: an account's right to a product.

    ``quantity`` is devices (perpetual, subscription, metered), seats
    (floating), and exactly 1 for node-locked and trial. ``starts_at``
    defaults to now.
    """

    account_id: str = Field(min_length=1, max_length=36)
    product_id: str = Field(min_length=1, max_length=36)
    license_model: LicenseModel
    quantity: int = Field(default=1, ge=1, le=1_000_000)
    starts_at: datetime | None = None
    ends_at: datetime | None = None
    grace_seconds: int = Field(default=0, ge=0, le=366 * 86400)
    feature_overrides: Overrides = Field(default_factory=dict)
    reason: Reason = ""

    @model_validator(mode="after")
    def _fits_model(self) -> Self:
        if self.license_model in SINGLE_DEVICE_MODELS and self.quantity != 1:
            raise ValueError(f"a {self.license_model} entitlement has quantity 1")
        if self.starts_at is not None:
            check_term(self.license_model, self.starts_at, self.ends_at)
        return self


class EntitlementUpdate(_Strict):
    """Entitlement changes: feature overrides (replaced whole), grace, quantity."""

    feature_overrides: Overrides | None = None
    quantity: int | None = Field(default=None, ge=1, le=1_000_000)
    grace_seconds: int | None = Field(default=None, ge=0, le=366 * 86400)
    reason: Reason = ""


class EntitlementPublic(_Public):
    """An entitlement."""

    id: str
    account_id: str
    product_id: str
    license_model: LicenseModel
    quantity: int
    starts_at: datetime
    ends_at: datetime | None
    grace_seconds: int
    status: Status
    feature_overrides: dict[str, Any]
    created_at: datetime
    updated_at: datetime


class ReasonBody(_Strict):
    """Why an action is taken (kept in the history)."""

    reason: Reason = ""


class RenewBody(_Strict):
    """Renewal: a new end, or a term to add (default: the current term length)."""

    ends_at: datetime | None = None
    term_seconds: int | None = Field(default=None, ge=1, le=20 * 366 * 86400)
    reason: Reason = ""

    @model_validator(mode="after")
    def _one_of(self) -> Self:
        if self.ends_at is not None and self.term_seconds is not None:
            raise ValueError("give ends_at or term_seconds, not both")
        return self


class RehostBody(_Strict):
    """Move an entitlement from a failed device to its replacement."""

    from_device_id: str = Field(min_length=1, max_length=64)
    to_device_id: str = Field(min_length=1, max_length=64)
    temporary_seconds: int | None = Field(default=None, ge=60, le=366 * 86400)
    reason: Reason = ""


class EntitlementChange(BaseModel):
    """Result of an action: the entitlement and the devices whose rights changed."""

    entitlement: EntitlementPublic
    affected_device_ids: list[str]


# ---------------------------------------------------------------- activations


class ActivationCreate(_Strict):
    """Activate an entitlement on a device."""

    device_id: str = Field(min_length=1, max_length=64)
    reason: Reason = ""


class ActivationPublic(_Public):
    """An activation (open while ``deactivated_at`` is null)."""

    id: str
    entitlement_id: str
    device_id: str
    activated_at: datetime
    deactivated_at: datetime | None
    temporary_until: datetime | None


class ActivationChange(BaseModel):
    """Result of an activation change and the devices whose rights changed."""

    activation: ActivationPublic
    affected_device_ids: list[str]


class SeatPublic(_Public):
    """A floating seat lease."""

    entitlement_id: str
    device_id: str
    acquired_at: datetime
    heartbeat_at: datetime
    released_at: datetime | None
    release_reason: str | None


# ---------------------------------------------------------------- device view, history


class FeatureEntryPublic(BaseModel):
    """One effective feature, as it goes into the device's manifest."""

    enabled: bool
    limit: int | None = None
    cap: int | None = None
    period: Period | None = None
    overage: Overage | None = None


class DeviceGrantPublic(BaseModel):
    """One entitlement activated on a device, and whether it is in force now."""

    entitlement_id: str
    account_id: str
    product_id: str
    license_model: LicenseModel
    status: Status
    starts_at: datetime
    ends_at: datetime | None
    grace_seconds: int
    temporary_until: datetime | None
    seat_held: bool
    in_force: bool


class DeviceEntitlements(BaseModel):
    """A device's grants and the features they add up to at ``at``."""

    device_id: str
    at: datetime
    grants: list[DeviceGrantPublic]
    features: dict[str, FeatureEntryPublic]


class HistoryEntryPublic(_Public):
    """One entry of the entitlement history."""

    id: int
    at: datetime
    actor: str
    action: str
    account_id: str
    entitlement_id: str | None
    device_id: str | None
    reason: str
    detail: dict[str, Any] | None
