"""``/api/v1/devices/{device_id}/entitlements`` and ``.../history``."""

from __future__ import annotations

from fastapi import APIRouter

from hub.api.deps import NowDep, Page, PaginationDep, SessionDep, ViewerDep
from hub.entitlements import history
from hub.entitlements.grants import describe_device
from hub.entitlements.routers.common import history_page
from hub.entitlements.schemas import DeviceEntitlements, HistoryEntryPublic
from hub.registry.service import get_device

router = APIRouter(prefix="/devices/{device_id}", tags=["devices"])


@router.get("/entitlements")
def device_entitlements(
    device_id: str, session: SessionDep, caller: ViewerDep, now: NowDep
) -> DeviceEntitlements:
    """The device's activated entitlements and the effective features they give now."""
    return describe_device(session, caller.tenant_id, device_id, now)


@router.get("/history")
def device_history(
    device_id: str, session: SessionDep, caller: ViewerDep, page: PaginationDep
) -> Page[HistoryEntryPublic]:
    """The device's entitlement history, newest first."""
    get_device(session, caller.tenant_id, device_id)
    result = history.for_device(
        session, caller.tenant_id, device_id, limit=page.limit, offset=page.offset
    )
    return history_page(result, page)
