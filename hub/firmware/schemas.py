"""REST bodies of the firmware catalogue and device firmware state."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict


class PackagePublic(BaseModel):
    """A firmware package as the catalogue lists it (never the payload)."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    device_class_id: str
    version: str
    sequence: int
    size: int
    sha256: str
    chunk_size: int
    chunk_count: int
    manifest_digest: str
    release_notes: str
    required_product_id: str | None
    required_feature: str | None
    created_at: datetime


class DeviceFirmwarePublic(BaseModel):
    """What a device runs, and its current firmware jobs."""

    device_id: str
    installed_seq: int
    installed_version: str | None
    package_id: str | None
    updated_at: datetime | None
    jobs: list[DeviceJobPublic]


class DeviceJobPublic(BaseModel):
    """One current firmware job of a device."""

    model_config = ConfigDict(from_attributes=True)

    job_id: str
    rollout_id: str
    package_id: str
    state: str
    attempt: int
    last_step: str | None
    reason: str | None
    offered_at: datetime | None
    deadline_at: datetime | None
    updated_at: datetime


DeviceFirmwarePublic.model_rebuild()
