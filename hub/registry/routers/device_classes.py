"""``/api/v1/device-classes``: hardware classes (SUIT vendor/class ids)."""

from __future__ import annotations

from fastapi import APIRouter, status

from hub.api.deps import NowDep, OperatorDep, Page, PaginationDep, SessionDep, ViewerDep
from hub.registry import service
from hub.registry.schemas import DeviceClassCreate, DeviceClassPublic, DeviceClassUpdate

router = APIRouter(prefix="/device-classes", tags=["device-classes"])


@router.post("", status_code=status.HTTP_201_CREATED)
def create_device_class(
    body: DeviceClassCreate, session: SessionDep, caller: OperatorDep, now: NowDep
) -> DeviceClassPublic:
    """Create a device class ((vendor_id, class_id) unique per tenant)."""
    device_class = service.create_device_class(
        session, tenant_id=caller.tenant_id, actor=caller.actor, now=now, data=body
    )
    return DeviceClassPublic.model_validate(device_class)


@router.get("")
def list_device_classes(
    session: SessionDep, caller: ViewerDep, page: PaginationDep
) -> Page[DeviceClassPublic]:
    """List device classes ordered by name."""
    items, total = service.list_device_classes(
        session, caller.tenant_id, limit=page.limit, offset=page.offset
    )
    return Page[DeviceClassPublic](
        items=[DeviceClassPublic.model_validate(c) for c in items],
        total=total,
        limit=page.limit,
        offset=page.offset,
    )


@router.get("/{class_id}")
def get_device_class(class_id: str, session: SessionDep, caller: ViewerDep) -> DeviceClassPublic:
    """Get one device class."""
    return DeviceClassPublic.model_validate(
        service.get_device_class(session, caller.tenant_id, class_id)
    )


@router.patch("/{class_id}")
def update_device_class(
    class_id: str, body: DeviceClassUpdate, session: SessionDep, caller: OperatorDep, now: NowDep
) -> DeviceClassPublic:
    """Rename a device class."""
    device_class = service.update_device_class(
        session,
        tenant_id=caller.tenant_id,
        actor=caller.actor,
        now=now,
        class_id=class_id,
        data=body,
    )
    return DeviceClassPublic.model_validate(device_class)
