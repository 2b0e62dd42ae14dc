"""Ranged HTTP download of a job's payload for devices with IP access.

``GET /api/v1/device/firmware/{job_id}/payload`` with HTTP Basic auth (the
device's MQTT username and password, checked against the stored ``$7$`` hash
in constant time by :class:`hub.registry.credentials.DbCredentialVerifier`)
and an optional ``Range: bytes=...`` header. Answers, in the order checked:

- ``401`` no or bad credentials, or not a claimed device;
- ``404 unknown_job`` no such job *for this device* (another device's job
  looks exactly like a missing one);
- ``409 job_not_active`` the job is not in progress;
- ``403 not_entitled`` the device fails the package's entitlement gate now;
- ``416`` an unsatisfiable or unsupported range (``Content-Range: bytes */size``);
- ``206`` with ``Content-Range`` for a range, ``200`` for the whole payload.
"""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from hub.api.deps import NowDep, SessionDep, error_body
from hub.broker.passwords import hash_password, new_secret
from hub.broker.principals import PrincipalKind
from hub.firmware.deps import BlobStoreDep
from hub.firmware.errors import JobNotActive, NotEntitled, RangeNotSatisfiable, UnknownJob
from hub.firmware.gate import Gate, entitled_devices
from hub.firmware.models import FirmwarePackage
from hub.registry.credentials import DbCredentialVerifier
from hub.rollouts.models import FirmwareJob
from hub.rollouts.policy import ACTIVE_STATES
from hub.settings import Settings
from protocols.firmware_messages import is_job_id

router = APIRouter(prefix="/device/firmware", tags=["device firmware"])
_basic = HTTPBasic(auto_error=False, realm="hub-device")
# At most 19 digits: int() of thousands of digits raises (and is slow); no
# payload is anywhere near 10^19 bytes.
_RANGE = re.compile(r"bytes=(\d{0,19})-(\d{0,19})")
INLINE_LIMIT = 4 * 1024 * 1024
"""Ranges up to this size are read before answering; larger ones are streamed."""


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The inclusive byte range a ``Range`` header asks for, ``None`` for the whole payload.

    Supported: ``bytes=a-b``, ``bytes=a-``, ``bytes=-n`` (the last ``n`` bytes),
    one range only. ``b`` past the end is clipped to the last byte.

    Raises:
        RangeNotSatisfiable: malformed, several ranges, or nothing of it inside the payload.
    """
    if header is None:
        return None
    match = _RANGE.fullmatch(header.strip())
    if match is None or (not match.group(1) and not match.group(2)):
        raise RangeNotSatisfiable(f"unsupported Range {header[:64]!r}", size=size)
    first_text, last_text = match.groups()
    if not first_text:
        suffix = int(last_text)
        if suffix == 0:
            raise RangeNotSatisfiable("an empty suffix range", size=size)
        return max(0, size - suffix), size - 1
    first = int(first_text)
    last = int(last_text) if last_text else size - 1
    if first >= size or last < first:
        raise RangeNotSatisfiable(f"range {first}-{last} outside 0-{size - 1}", size=size)
    return first, min(last, size - 1)


def _verifier(request: Request) -> DbCredentialVerifier:
    state = request.app.state
    verifier: DbCredentialVerifier | None = getattr(state, "firmware_device_verifier", None)
    if verifier is None:
        settings: Settings = state.settings
        factory: sessionmaker[Session] = state.session_factory
        # The hub's own login must never pass here: its hash is of a secret nobody has.
        verifier = DbCredentialVerifier(
            factory,
            hub_username=settings.hub_client_id,
            hub_password_hash=hash_password(new_secret()),
        )
        state.firmware_device_verifier = verifier
    return verifier


def authenticated_device(
    request: Request, credentials: Annotated[HTTPBasicCredentials | None, Depends(_basic)]
) -> str | None:
    """The claimed device the Basic credentials belong to, or ``None``."""
    if credentials is None:
        return None
    principal = _verifier(request).verify(credentials.username, credentials.password)
    if principal is None or principal.kind is not PrincipalKind.DEVICE:
        return None
    return principal.username


def _unauthenticated() -> JSONResponse:
    return JSONResponse(
        error_body("unauthenticated", "device credentials required (HTTP Basic)"),
        status_code=401,
        headers={"WWW-Authenticate": 'Basic realm="hub-device"'},
    )


def _job(session: Session, device_id: str, job_id: str) -> FirmwareJob:
    job = None
    if is_job_id(job_id):
        job = session.scalar(select(FirmwareJob).where(FirmwareJob.job_id == job_id))
    if job is None or job.device_id != device_id:
        raise UnknownJob(f"no firmware job {job_id[:40]} for this device")
    if job.retired_at is not None or job.state not in ACTIVE_STATES:
        raise JobNotActive(f"job {job_id} is {job.state}, not in progress")
    return job


@router.get(
    "/{job_id}/payload",
    response_class=Response,
    responses={
        200: {"content": {"application/octet-stream": {}}},
        206: {"content": {"application/octet-stream": {}}},
        401: {},
        403: {},
        404: {},
        409: {},
        416: {},
    },
)
def payload(
    job_id: str,
    session: SessionDep,
    now: NowDep,
    store: BlobStoreDep,
    device_id: Annotated[str | None, Depends(authenticated_device)],
    range_header: Annotated[str | None, Header(alias="Range")] = None,
) -> Response:
    """A device's ranged download of its job's payload (see the module docstring)."""
    if device_id is None:
        return _unauthenticated()
    job = _job(session, device_id, job_id)
    package = session.get_one(FirmwarePackage, job.package_id)
    if device_id not in entitled_devices(session, [device_id], Gate.of(package), now):
        raise NotEntitled(f"this device is not entitled to job {job.job_id}")
    try:
        wanted = parse_range(range_header, package.size)
    except RangeNotSatisfiable as exc:
        return JSONResponse(
            error_body(exc.code, str(exc)),
            status_code=416,
            headers={"Content-Range": f"bytes */{package.size}"},
        )
    first, last = wanted if wanted is not None else (0, package.size - 1)
    headers = {"Accept-Ranges": "bytes", "Content-Length": str(last - first + 1)}
    status = 200
    if wanted is not None:
        status = 206
        headers["Content-Range"] = f"bytes {first}-{last}/{package.size}"
    media = "application/octet-stream"
    if last - first + 1 <= INLINE_LIMIT:
        body = store.read_range(package.blob_key, first, last + 1)
        return Response(body, status_code=status, headers=headers, media_type=media)
    stream = store.iter_range(package.blob_key, first, last + 1)
    return StreamingResponse(stream, status_code=status, headers=headers, media_type=media)
