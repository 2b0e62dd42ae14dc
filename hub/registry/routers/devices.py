"""``/api/v1/devices``: register, list, update, reset claims, bulk CSV import."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, status
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from hub.api.deps import (
    DeviceAccessDep,
    NowDep,
    OperatorDep,
    Page,
    PaginationDep,
    SessionDep,
    ViewerDep,
)
from hub.errors import ValidationFailed
from hub.registry import service
from hub.registry.schemas import (
    DeviceCreate,
    DevicePublic,
    DeviceStatus,
    DeviceUpdate,
    ImportResult,
)

router = APIRouter(prefix="/devices", tags=["devices"])

_IMPORT_BODY_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "text/csv": {"schema": {"type": "string"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"file": {"type": "string", "format": "binary"}},
                    "required": ["file"],
                }
            },
        },
    }
}


async def _read_capped(request: Request, cap: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > cap:
        raise service.PayloadTooLarge(f"import body larger than {cap} bytes")
    chunks: list[bytes] = []
    size = 0
    # Count while streaming: a chunked body has no Content-Length to trust.
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            raise service.PayloadTooLarge(f"import body larger than {cap} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _once(body: bytes) -> AsyncGenerator[bytes, None]:
    yield body


async def _file_from_multipart(request: Request, body: bytes) -> bytes:
    parser = MultiPartParser(request.headers, _once(body), max_files=1, max_fields=10)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise ValidationFailed(f"bad multipart body: {exc.message}") from exc
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise ValidationFailed("multipart body needs a file field named 'file'")
    try:
        return await upload.read()
    finally:
        await form.close()


async def csv_text(request: Request) -> str:
    """The import CSV from a multipart ``file`` field or a raw ``text/csv`` body.

    Raises:
        PayloadTooLarge: the body exceeds the import size cap.
        ValidationFailed: unsupported content type, or not UTF-8.
    """
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in ("multipart/form-data", "text/csv", "text/plain"):
        raise ValidationFailed("send CSV as text/csv or as multipart field 'file'")
    # Multipart framing adds a little; allow for it on top of the CSV cap.
    body = await _read_capped(request, service.MAX_IMPORT_BYTES + 64 * 1024)
    raw = await _file_from_multipart(request, body) if content_type.startswith("multi") else body
    if len(raw) > service.MAX_IMPORT_BYTES:
        raise service.PayloadTooLarge(f"import larger than {service.MAX_IMPORT_BYTES} bytes")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise service.MalformedCsv("CSV must be UTF-8") from exc


@router.post("", status_code=status.HTTP_201_CREATED)
def create_device(
    body: DeviceCreate, session: SessionDep, caller: OperatorDep, now: NowDep
) -> DevicePublic:
    """Register a device; the hub issues its id (``dev-`` + 20 hex)."""
    device = service.create_device(
        session, tenant_id=caller.tenant_id, actor=caller.actor, now=now, data=body
    )
    return DevicePublic.model_validate(device)


@router.post("/import", openapi_extra=_IMPORT_BODY_DOC)
def import_devices(
    text: Annotated[str, Depends(csv_text)], session: SessionDep, caller: OperatorDep, now: NowDep
) -> ImportResult:
    """Bulk import from CSV ``serial,device_class_id,tags,public_key``; rows are independent."""
    return service.import_devices(
        session, tenant_id=caller.tenant_id, actor=caller.actor, now=now, text=text
    )


@router.get("")
def list_devices(
    *,
    session: SessionDep,
    caller: ViewerDep,
    page: PaginationDep,
    device_class_id: str | None = None,
    status: DeviceStatus | None = None,
    tag: str | None = None,
    serial_prefix: Annotated[str | None, Query(max_length=64)] = None,
    online: bool | None = None,
) -> Page[DevicePublic]:
    """List devices, oldest first, with optional filters."""
    flt = service.DeviceFilter(
        device_class_id=device_class_id,
        status=status,
        tag=tag,
        serial_prefix=serial_prefix,
        online=online,
    )
    items, total = service.list_devices(
        session, caller.tenant_id, flt, limit=page.limit, offset=page.offset
    )
    return Page[DevicePublic](
        items=[DevicePublic.model_validate(d) for d in items],
        total=total,
        limit=page.limit,
        offset=page.offset,
    )


@router.get("/{device_id}")
def get_device(device_id: str, session: SessionDep, caller: ViewerDep) -> DevicePublic:
    """Get one device."""
    return DevicePublic.model_validate(service.get_device(session, caller.tenant_id, device_id))


@router.patch("/{device_id}")
def update_device(
    device_id: str,
    body: DeviceUpdate,
    session: SessionDep,
    caller: OperatorDep,
    now: NowDep,
    access_changed: DeviceAccessDep,
) -> DevicePublic:
    """Change tags; disable (``disabled``) or re-enable (``registered``) the device.

    A status change refreshes the broker's credentials after the commit and, on
    the embedded broker, closes the device's live session.
    """
    if body.status is not None:
        access_changed(device_id)
    device = service.update_device(
        session,
        tenant_id=caller.tenant_id,
        actor=caller.actor,
        now=now,
        device_id=device_id,
        data=body,
    )
    return DevicePublic.model_validate(device)


@router.post("/{device_id}/reset-claim")
def reset_claim(
    device_id: str,
    session: SessionDep,
    caller: OperatorDep,
    now: NowDep,
    access_changed: DeviceAccessDep,
    forget_key: bool = False,
) -> DevicePublic:
    """Delete the device's MQTT credential so it can claim again.

    ``forget_key=true`` also drops its public key (a factory-reset device with a
    new key). The device's live session is closed after the commit.
    """
    device = service.reset_claim(
        session,
        tenant_id=caller.tenant_id,
        actor=caller.actor,
        now=now,
        device_id=device_id,
        forget_key=forget_key,
    )
    access_changed(device_id)
    return DevicePublic.model_validate(device)
