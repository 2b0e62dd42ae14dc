"""``/api/v1/firmware/packages``: upload, list, show, envelope; ``/devices/{id}/firmware``."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Annotated, BinaryIO

from fastapi import APIRouter, Depends, Query, Request, Response, status
from sqlalchemy import select
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from hub.api.deps import NowDep, OperatorDep, Page, PaginationDep, SessionDep, ViewerDep
from hub.errors import ValidationFailed
from hub.firmware import catalogue
from hub.firmware.catalogue import MAX_RELEASE_NOTES, PackageInput
from hub.firmware.deps import UploaderDep, upload_limits
from hub.firmware.errors import PackageTooLarge
from hub.firmware.models import DeviceFirmware
from hub.firmware.schemas import DeviceFirmwarePublic, DeviceJobPublic, PackagePublic
from hub.registry.service import get_device
from hub.rollouts.models import FirmwareJob

router = APIRouter(tags=["firmware"])

SUIT_MEDIA_TYPE = "application/suit-envelope+cose"
FORM_OVERHEAD = 64 * 1024
"""Room for the multipart framing and the text fields on top of the payload cap."""
_FIELDS = (
    "device_class_id",
    "version",
    "release_notes",
    "required_product_id",
    "required_feature",
    "chunk_size",
)
_UPLOAD_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        **{name: {"type": "string"} for name in _FIELDS},
                        "chunk_size": {"type": "integer", "minimum": 1024, "maximum": 32768},
                        "file": {"type": "string", "format": "binary"},
                    },
                    "required": ["device_class_id", "version", "file"],
                }
            }
        },
    }
}


@dataclass(frozen=True, slots=True)
class UploadForm:
    """A parsed upload: the fields and the spooled payload."""

    data: PackageInput
    file: BinaryIO


async def _capped(request: Request, cap: int) -> AsyncGenerator[bytes, None]:
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            raise PackageTooLarge(f"upload larger than {cap} bytes")
        yield chunk


def _text(form: dict[str, str], name: str, limit: int = 64) -> str | None:
    value = form.get(name, "").strip()
    if len(value) > limit:
        raise ValidationFailed(f"{name}: at most {limit} characters")
    return value or None


def _form_input(fields: dict[str, str]) -> PackageInput:
    class_id, version = _text(fields, "device_class_id"), _text(fields, "version")
    if class_id is None or version is None:
        raise ValidationFailed("device_class_id and version are required")
    chunk_text = _text(fields, "chunk_size")
    if chunk_text is not None and not chunk_text.isdigit():
        raise ValidationFailed("chunk_size must be a whole number of bytes")
    return PackageInput(
        device_class_id=class_id,
        version=version,
        release_notes=_text(fields, "release_notes", MAX_RELEASE_NOTES) or "",
        required_product_id=_text(fields, "required_product_id"),
        required_feature=_text(fields, "required_feature"),
        chunk_size=int(chunk_text) if chunk_text is not None else None,
    )


async def upload_form(request: Request, caller: OperatorDep) -> AsyncIterator[UploadForm]:
    """Parse the multipart upload, refusing bodies over the cap while they stream in.

    Depends on the caller's role, so an unauthenticated or under-privileged
    request is refused before a byte of its body is read.

    Raises:
        ValidationFailed: not multipart, malformed, a missing field or file.
        PackageTooLarge: the body is larger than the cap allows.
    """
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise ValidationFailed("upload firmware as multipart/form-data with a 'file' field")
    cap = upload_limits(request).max_bytes + FORM_OVERHEAD
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > cap:
        raise PackageTooLarge(f"upload larger than {cap} bytes")
    parser = MultiPartParser(
        request.headers,
        _capped(request, cap),
        max_files=1,
        max_fields=10,
        max_part_size=FORM_OVERHEAD,
    )
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise ValidationFailed(f"bad multipart body: {exc.message}") from exc
    try:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise ValidationFailed("the upload needs a file field named 'file'")
        fields = {k: v for k, v in form.multi_items() if isinstance(v, str)}
        yield UploadForm(data=_form_input(fields), file=upload.file)
    finally:
        await form.close()


UploadFormDep = Annotated[UploadForm, Depends(upload_form)]


@router.post("/firmware/packages", status_code=status.HTTP_201_CREATED, openapi_extra=_UPLOAD_DOC)
def upload_package(
    caller: OperatorDep,
    form: UploadFormDep,
    session: SessionDep,
    now: NowDep,
    uploader: UploaderDep,
) -> PackagePublic:
    """Add a firmware package: payload stored, SUIT envelope built and signed, row committed."""
    package = catalogue.create_package(
        session,
        tenant_id=caller.tenant_id,
        actor=caller.actor,
        now=now,
        data=form.data,
        payload=form.file,
        uploader=uploader,
    )
    try:
        session.commit()
    except BaseException:
        catalogue.discard_blob(uploader.store, package.blob_key)
        raise
    return PackagePublic.model_validate(package)


@router.get("/firmware/packages")
def list_packages(
    session: SessionDep,
    caller: ViewerDep,
    page: PaginationDep,
    device_class_id: Annotated[str | None, Query(max_length=36)] = None,
) -> Page[PackagePublic]:
    """The tenant's packages, newest first."""
    items, total = catalogue.list_packages(
        session,
        caller.tenant_id,
        device_class_id=device_class_id,
        limit=page.limit,
        offset=page.offset,
    )
    return Page[PackagePublic](
        items=[PackagePublic.model_validate(p) for p in items],
        total=total,
        limit=page.limit,
        offset=page.offset,
    )


@router.get("/firmware/packages/{package_id}")
def get_package(package_id: str, session: SessionDep, caller: ViewerDep) -> PackagePublic:
    """One package."""
    return PackagePublic.model_validate(
        catalogue.get_package(session, caller.tenant_id, package_id)
    )


@router.get(
    "/firmware/packages/{package_id}/envelope",
    response_class=Response,
    responses={200: {"content": {SUIT_MEDIA_TYPE: {}}}},
)
def get_envelope(package_id: str, session: SessionDep, caller: ViewerDep) -> Response:
    """The package's signed SUIT envelope (CBOR tag 107), as devices receive it."""
    package = catalogue.get_package(session, caller.tenant_id, package_id)
    return Response(package.envelope, media_type=SUIT_MEDIA_TYPE)


@router.get("/devices/{device_id}/firmware")
def device_firmware(device_id: str, session: SessionDep, caller: ViewerDep) -> DeviceFirmwarePublic:
    """What the device runs and its current firmware jobs."""
    device = get_device(session, caller.tenant_id, device_id)
    row = session.get(DeviceFirmware, device.id)
    jobs = session.scalars(
        select(FirmwareJob)
        .where(FirmwareJob.device_id == device.id, FirmwareJob.retired_at.is_(None))
        .order_by(FirmwareJob.created_at.desc(), FirmwareJob.id.desc())
        .limit(50)
    )
    return DeviceFirmwarePublic(
        device_id=device.id,
        installed_seq=row.installed_seq if row else 0,
        installed_version=row.installed_version if row else None,
        package_id=row.package_id if row else None,
        updated_at=row.updated_at if row else None,
        jobs=[DeviceJobPublic.model_validate(job) for job in jobs],
    )
