"""REST bodies of rollouts (``XCreate`` / ``XPublic``)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from hub.registry.schemas import Identifier, Name
from hub.rollouts.policy import DAYS, parse_window

Day = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
MAX_WAVES = 20
MAX_WINDOWS = 14
assert len(DAYS) == 7


class TargetFilter(BaseModel):
    """Which devices of the package's class a rollout targets (all conditions hold).

    ``tags``: the device carries every one; ``current_versions``: its known
    installed version is one of them; ``account_id``: one of its open
    activations belongs to this customer account.
    """

    tags: list[Identifier] = Field(default_factory=list, max_length=32)
    current_versions: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(
        default_factory=list, max_length=64
    )
    account_id: str | None = Field(default=None, max_length=36)


class WaveIn(BaseModel):
    """One wave: a percentage of the targets or an explicit number of devices."""

    percent: int | None = Field(default=None, ge=1, le=100)
    size: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _one(self) -> Self:
        if (self.percent is None) == (self.size is None):
            raise ValueError("a wave has either percent or size")
        return self


def _check_window(window: WindowIn) -> WindowIn:
    parse_window(window.model_dump())
    return window


class WindowIn(BaseModel):
    """A weekly maintenance window in UTC; ``end`` before ``start`` runs past midnight."""

    days: list[Day] = Field(default_factory=lambda: list(DAYS))  # type: ignore[arg-type]
    start: str = Field(pattern=r"^([01]\d|2[0-3]):[0-5]\d$")
    end: str = Field(pattern=r"^([01]\d|2[0-3]):[0-5]\d$")


class RolloutCreate(BaseModel):
    """A new rollout (created as ``draft``; ``POST .../start`` selects targets)."""

    name: Name
    package_id: str = Field(min_length=1, max_length=36)
    filter: TargetFilter = Field(default_factory=TargetFilter)
    waves: list[WaveIn] = Field(
        default_factory=lambda: [WaveIn(percent=100)], min_length=1, max_length=MAX_WAVES
    )
    success_percent: int = Field(default=95, ge=1, le=100)
    failure_percent: int = Field(default=10, ge=0, le=100)
    failure_min_sample: int = Field(default=5, ge=1)
    failure_action: Literal["pause", "abort"] = "pause"
    device_timeout_seconds: int = Field(default=3600, ge=30, le=30 * 86_400)
    maintenance_windows: list[Annotated[WindowIn, AfterValidator(_check_window)]] = Field(
        default_factory=list, max_length=MAX_WINDOWS
    )

    @model_validator(mode="after")
    def _percent_total(self) -> Self:
        if sum(wave.percent or 0 for wave in self.waves) > 100:
            raise ValueError("wave percentages add up to more than 100")
        return self


class RolloutAction(BaseModel):
    """Optional reason for pause and cancel."""

    reason: str | None = Field(default=None, max_length=256)


class WavePublic(BaseModel):
    """A wave's plan and progress (job counts by state)."""

    number: int
    percent: int | None
    size: int | None
    planned: int
    started_at: datetime | None
    completed_at: datetime | None
    counts: dict[str, int]


class RolloutPublic(BaseModel):
    """A rollout with its progress."""

    id: str
    name: str
    package_id: str
    package_version: str
    device_class_id: str
    state: str
    state_reason: str | None
    filter: TargetFilter
    success_percent: int
    failure_percent: int
    failure_min_sample: int
    failure_action: str
    device_timeout_seconds: int
    maintenance_windows: list[WindowIn]
    current_wave: int
    target_count: int
    skipped: dict[str, int]
    counts: dict[str, int]
    waves: list[WavePublic]
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime


class RetryResult(BaseModel):
    """How many failed devices a retry put back in line."""

    retried: int
    rollout: RolloutPublic


class JobPublic(BaseModel):
    """One device's job in a rollout."""

    model_config = ConfigDict(from_attributes=True)

    job_id: str
    device_id: str
    wave: int
    attempt: int
    state: str
    last_step: str | None
    reason: str | None
    offered_at: datetime | None
    deadline_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime
