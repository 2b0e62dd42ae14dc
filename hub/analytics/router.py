"""``/api/v1/analytics``: fleet analytics for viewers, scoped to the caller's tenant."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query

from hub.analytics import service
from hub.analytics.schemas import (
    LeakageReport,
    LicenseModelsReport,
    TimeToActivateReport,
    UnusedEntitlement,
)
from hub.api.deps import NowDep, Page, PaginationDep, SessionDep, ViewerDep
from hub.entitlements import history
from hub.entitlements import service as entitlements
from hub.entitlements.routers.common import history_page
from hub.entitlements.schemas import HistoryEntryPublic

router = APIRouter(prefix="/analytics", tags=["analytics"])


@router.get("/time-to-activate")
def time_to_activate(
    session: SessionDep,
    caller: ViewerDep,
    now: NowDep,
    since: Annotated[
        datetime | None,
        Query(description="only first activations at or after this instant (naive: UTC)"),
    ] = None,
) -> TimeToActivateReport:
    """Per product: seconds from registration to first activation (min, p50, p90, max, mean)."""
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    return service.time_to_activate(session, caller.tenant_id, now, since=since)


@router.get("/license-models")
def license_models(session: SessionDep, caller: ViewerDep, now: NowDep) -> LicenseModelsReport:
    """Entitlements by license model and status, and the devices each model covers now."""
    return service.license_models(session, caller.tenant_id, now)


@router.get("/unused-entitlements")
def unused_entitlements(
    session: SessionDep,
    caller: ViewerDep,
    now: NowDep,
    page: PaginationDep,
    idle_days: Annotated[
        int, Query(ge=0, le=3650, description="floating: days without a seat held")
    ] = 30,
) -> Page[UnusedEntitlement]:
    """Active entitlements nobody uses (churn risk), longest unused first."""
    items, total = service.unused_entitlements(
        session, caller.tenant_id, now, idle_days=idle_days, limit=page.limit, offset=page.offset
    )
    return Page[UnusedEntitlement](items=items, total=total, limit=page.limit, offset=page.offset)


@router.get("/leakage")
def leakage(session: SessionDep, caller: ViewerDep, now: NowDep) -> LeakageReport:
    """Devices whose acknowledged manifest grants more than their entitlements (should be none)."""
    return service.leakage(session, caller.tenant_id, now)


@router.get("/entitlement-history/{account_id}")
def entitlement_history(
    account_id: str, session: SessionDep, caller: ViewerDep, page: PaginationDep
) -> Page[HistoryEntryPublic]:
    """An account's entitlement history, newest first (as ``/accounts/{id}/history``)."""
    entitlements.get_account(session, caller.tenant_id, account_id)
    result = history.for_account(
        session, caller.tenant_id, account_id, limit=page.limit, offset=page.offset
    )
    return history_page(result, page)
