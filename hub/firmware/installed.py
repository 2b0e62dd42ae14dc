"""What each device runs: updated from ``fw_query`` and from confirmed installs."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from hub.audit.service import record
from hub.firmware.models import DeviceFirmware, FirmwarePackage

INT64_MAX = 2**63 - 1
"""Sequence numbers above this cannot be stored (BIGINT) and are never ours."""


def _row(session: Session, device_id: str, tenant_id: str, now: datetime) -> DeviceFirmware:
    row = session.get(DeviceFirmware, device_id)
    if row is None:
        row = DeviceFirmware(
            device_id=device_id, tenant_id=tenant_id, installed_seq=0, updated_at=now
        )
        session.add(row)
    return row


def _set(
    session: Session,
    row: DeviceFirmware,
    seq: int,
    package: FirmwarePackage | None,
    *,
    now: datetime,
) -> None:
    """Update ``row`` and audit the change (nothing when nothing changed)."""
    version = package.version if package is not None else None
    package_id = package.id if package is not None else None
    before = (row.installed_seq, row.installed_version, row.package_id)
    if before == (seq, version, package_id):
        return
    row.installed_seq, row.installed_version, row.package_id = seq, version, package_id
    row.updated_at = now
    record(
        session,
        tenant_id=row.tenant_id,
        actor=f"device:{row.device_id}",
        action="firmware.device.installed",
        target_type="device",
        target_id=row.device_id,
        now=now,
        detail={"from_seq": before[0], "seq": seq, "version": version, "package_id": package_id},
    )


def note_reported(
    session: Session,
    *,
    device_id: str,
    tenant_id: str,
    device_class_id: str,
    seq: int,
    now: datetime,
) -> DeviceFirmware:
    """Record the sequence a device says it runs; the version is the catalogue's, if known."""
    row = _row(session, device_id, tenant_id, now)
    package = None
    if seq:
        package = session.scalar(
            select(FirmwarePackage).where(
                FirmwarePackage.device_class_id == device_class_id,
                FirmwarePackage.sequence == seq,
            )
        )
    _set(session, row, seq, package, now=now)
    return row


def note_confirmed(
    session: Session, *, device_id: str, package: FirmwarePackage, now: datetime
) -> DeviceFirmware:
    """A device confirmed ``package``: it now runs that version."""
    row = _row(session, device_id, package.tenant_id, now)
    _set(session, row, package.sequence, package, now=now)
    return row


def installed_seqs(session: Session, device_ids: list[str]) -> dict[str, int]:
    """The last known installed sequence of each device that has one."""
    found: dict[str, int] = {}
    for start in range(0, len(device_ids), 900):
        chunk = device_ids[start : start + 900]
        rows = session.execute(
            select(DeviceFirmware.device_id, DeviceFirmware.installed_seq).where(
                DeviceFirmware.device_id.in_(chunk)
            )
        )
        found.update((device_id, seq) for device_id, seq in rows)
    return found
