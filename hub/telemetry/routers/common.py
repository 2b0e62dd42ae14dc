"""What the usage and meters routers share: the time window and the record filters."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated

from fastapi import Depends, Query
from sqlalchemy.orm import Session

from hub.api.deps import NowDep, SessionDep, ViewerDep
from hub.entitlements import service as entitlements
from hub.errors import ValidationFailed
from hub.registry import service as registry
from hub.telemetry.queries import GROUP_BY_CHOICES, RecordFilter
from hub.telemetry.schemas import TimeBasis, UsageTotalPublic

_GROUP_HELP = f"group keys, comma-separated or repeated, among {', '.join(GROUP_BY_CHOICES)}"


def _utc(value: datetime | None) -> datetime | None:
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def month_window(now: datetime) -> tuple[datetime, datetime]:
    """The UTC calendar month holding ``now``: ``[first day, first day of next month)``."""
    start = now.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = (
        start.replace(year=start.year + 1, month=1)
        if start.month == 12
        else start.replace(month=start.month + 1)
    )
    return start, end


@dataclass(frozen=True, slots=True)
class Window:
    """``[start, end)`` on ``recorded_at`` (``by=recorded``) or ``received_at``."""

    start: datetime
    end: datetime
    by: TimeBasis


def get_window(
    now: NowDep,
    start: Annotated[
        datetime | None,
        Query(description="window start, inclusive (naive: UTC); default: this month"),
    ] = None,
    end: Annotated[
        datetime | None,
        Query(description="window end, exclusive (naive: UTC); default: next month"),
    ] = None,
    by: Annotated[
        TimeBasis, Query(description="window on the device's time or the hub's receipt")
    ] = "recorded",
) -> Window:
    """Read the window; omitted bounds default to the current UTC month."""
    default_start, default_end = month_window(now)
    window = Window(_utc(start) or default_start, _utc(end) or default_end, by)
    if window.end < window.start:
        raise ValidationFailed("end is before start")
    return window


WindowDep = Annotated[Window, Depends(get_window)]


@dataclass(frozen=True, slots=True)
class Scope:
    """The caller's tenant and the optional account, device and meter filters."""

    tenant_id: str
    account_id: str | None
    device_id: str | None
    meter: str | None

    def records(self, window: Window) -> RecordFilter:
        """The record filter of this scope and ``window``."""
        return RecordFilter(
            tenant_id=self.tenant_id,
            start=window.start,
            end=window.end,
            account_id=self.account_id,
            meter=self.meter,
            device_id=self.device_id,
            by_received=window.by == "received",
        )


def get_scope(
    session: SessionDep,
    caller: ViewerDep,
    account_id: Annotated[str | None, Query(max_length=36)] = None,
    device_id: Annotated[str | None, Query(max_length=64)] = None,
    meter: Annotated[str | None, Query(max_length=64, description="metered feature key")] = None,
) -> Scope:
    """Check the filters belong to the caller's tenant (404 otherwise)."""
    check_filters(session, caller.tenant_id, account_id, device_id)
    return Scope(caller.tenant_id, account_id, device_id, meter)


def check_filters(
    session: Session, tenant_id: str, account_id: str | None, device_id: str | None
) -> None:
    """Raise NotFound for an account or device that is not the tenant's."""
    if account_id is not None:
        entitlements.get_account(session, tenant_id, account_id)
    if device_id is not None:
        registry.get_device(session, tenant_id, device_id)


ScopeDep = Annotated[Scope, Depends(get_scope)]


def parse_group_by(values: list[str] | None, default: tuple[str, ...]) -> tuple[str, ...]:
    """``group_by`` as given (comma-separated or repeated; empty: one total) or ``default``."""
    if values is None:
        return default
    return tuple(part.strip() for value in values for part in value.split(",") if part.strip())


GroupByQuery = Annotated[list[str] | None, Query(description=_GROUP_HELP)]


def total_public(total: object) -> UsageTotalPublic:
    """A :class:`~hub.telemetry.queries.UsageTotal` as the API shows it."""
    return UsageTotalPublic.model_validate(total, from_attributes=True)
