"""``GET /api/v1/devices/{id}/manifest``: a device's current manifest and its delivery."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime

from fastapi import APIRouter
from pydantic import BaseModel

from hub.api.deps import SessionDep, ViewerDep
from hub.errors import NotFound
from hub.manifests.models import DeviceManifest
from hub.registry import service as registry
from protocols.cose import decode_sign1
from protocols.manifest import decode_manifest

router = APIRouter(tags=["manifests"])


class ManifestPublic(BaseModel):
    """The device's current manifest, as issued, and where its delivery stands."""

    device_id: str
    seq: int
    issued_at: datetime
    not_after: datetime
    kid: str
    delivery_state: str
    attempts: int
    delivered_at: datetime | None
    acknowledged_at: datetime | None
    failure: str | None
    features: dict[str, dict[str, object]]


@router.get("/devices/{device_id}/manifest")
def get_device_manifest(device_id: str, session: SessionDep, caller: ViewerDep) -> ManifestPublic:
    """The current manifest of one of the caller's devices (404 when none was issued)."""
    registry.get_device(session, caller.tenant_id, device_id)  # 404 for other tenants
    row = session.get(DeviceManifest, device_id)
    if row is None:
        raise NotFound("no manifest has been issued to this device")
    payload = decode_sign1(row.signed).payload or b""
    manifest = decode_manifest(payload)
    features = {
        key: {k: v for k, v in asdict(entry).items() if v is not None}
        for key, entry in manifest.features.items()
    }
    return ManifestPublic(
        device_id=row.device_id,
        seq=row.seq,
        issued_at=row.issued_at,
        not_after=row.not_after,
        kid=row.kid,
        delivery_state=row.delivery_state,
        attempts=row.attempts,
        delivered_at=row.delivered_at,
        acknowledged_at=row.acknowledged_at,
        failure=row.failure,
        features=features,
    )
