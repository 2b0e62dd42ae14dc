"""Billing settings: ``HUB_BILLING_*`` environment variables.

Kept apart from :class:`hub.settings.Settings` (which refuses unknown keys) so
the billing plugin owns its knobs; every field has a production default.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class BillingSettings(BaseSettings):
    """Every knob of the billing jobs (see docs/billing.md)."""

    model_config = SettingsConfigDict(env_prefix="HUB_BILLING_", extra="ignore", frozen=True)

    grace_seconds: int = Field(
        default=3600, ge=0, description="late-record window after a period ends, before it closes"
    )
    job_seconds: int = Field(default=60, ge=1, description="period open/close job interval")
    auto_finalize: bool = Field(default=True, description="finalize invoices when a period closes")
    notify_seconds: int = Field(default=300, ge=1, description="threshold/expiry check interval")
    thresholds: Annotated[tuple[int, ...], NoDecode] = Field(
        default=(80, 100), description="percent of a metered cap that raises an event"
    )
    expiring_days: int = Field(default=7, ge=1, le=365, description="entitlement.expiring lead")
    delivery_seconds: int = Field(default=10, ge=1, description="webhook delivery job interval")
    delivery_backoff_seconds: int = Field(default=30, ge=1, description="first retry delay")
    delivery_max_backoff_seconds: int = Field(default=3600, ge=1, description="retry delay cap")
    delivery_max_attempts: int = Field(default=10, ge=1, le=100)
    delivery_timeout_seconds: float = Field(default=10.0, gt=0, le=120)
    delivery_batch: int = Field(default=50, ge=1, le=1000)
    webhook_allow_private: bool = Field(
        default=False, description="allow webhook URLs on loopback/private addresses (tests, labs)"
    )

    @field_validator("thresholds", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        """Accept ``"80,100"`` from the environment."""
        if isinstance(value, str):
            return tuple(int(part) for part in value.split(",") if part.strip())
        return value

    @field_validator("thresholds")
    @classmethod
    def _check(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if not value or any(not 1 <= percent <= 1000 for percent in value):
            raise ValueError("thresholds are percentages between 1 and 1000")
        return tuple(sorted(set(value)))
