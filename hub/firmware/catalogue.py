"""The firmware catalogue: upload, list, fetch; blob housekeeping.

Upload order, so that nothing is ever stored half way:

1. validate the form (device class, version syntax, not older than the
   class's newest package, required product and feature, chunk size);
2. stream the payload into the blob store (size cap, SHA-256 while streaming);
3. under a lock on the device class row: recheck the version, take the next
   SUIT sequence number, build and sign the envelope, insert the row;
4. the caller commits; :func:`discard_blob` removes the blob if any later step
   or the commit fails. A crash between 2 and 4 leaves an unreferenced blob,
   which :func:`sweep_orphans` deletes once it is older than its grace period.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import BinaryIO

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from hub.audit.service import record
from hub.entitlements.models import Feature
from hub.errors import NotFound
from hub.firmware.blobs import BlobInfo, BlobStore
from hub.firmware.envelope import build_package_envelope, chunk_size_candidates
from hub.firmware.errors import (
    BlobError,
    DuplicateVersion,
    EmptyPayload,
    UnknownDeviceClass,
    UnknownFeature,
    UnknownProduct,
    VersionNotNewer,
)
from hub.firmware.models import FirmwarePackage
from hub.firmware.semver import Version, parse_version
from hub.registry.models import DeviceClass, Product
from protocols import suit
from protocols.cose import CoseKey
from provisioning.signer import Signer

log = logging.getLogger(__name__)

MAX_PACKAGE_BYTES = 28 * 1024 * 1024
"""Upload cap. The wire contract bounds it: an offer's envelope holds at most
32 KiB (34 bytes of digest per chunk) and a chunk at most 32 KiB, so about
29 MiB is the most one envelope can describe; 28 MiB leaves headroom."""
MAX_RELEASE_NOTES = 16 * 1024
ORPHAN_GRACE = timedelta(hours=1)


@dataclass(frozen=True, slots=True)
class PackageInput:
    """The non-payload fields of an upload."""

    device_class_id: str
    version: str
    release_notes: str = ""
    required_product_id: str | None = None
    required_feature: str | None = None
    chunk_size: int | None = None


@dataclass(frozen=True, slots=True)
class UploadLimits:
    """What the hub accepts: payload cap and the MQTT payload cap chunks must fit."""

    max_bytes: int = MAX_PACKAGE_BYTES
    max_payload_bytes: int = 64 * 1024


def _device_class(
    session: Session, tenant_id: str, class_id: str, *, lock: bool = False
) -> DeviceClass:
    query = select(DeviceClass).where(
        DeviceClass.id == class_id, DeviceClass.tenant_id == tenant_id
    )
    found = session.scalar(query.with_for_update() if lock else query)
    if found is None:
        raise UnknownDeviceClass(f"device class {class_id} not found")
    return found


def _check_gate(session: Session, tenant_id: str, data: PackageInput) -> None:
    if data.required_product_id is None:
        if data.required_feature is not None:
            raise UnknownFeature("required_feature needs required_product_id")
        return
    product = session.get(Product, data.required_product_id)
    if product is None or product.tenant_id != tenant_id:
        raise UnknownProduct(f"product {data.required_product_id} not found")
    if data.required_feature is not None:
        feature = session.scalar(
            select(Feature.id).where(
                Feature.product_id == product.id, Feature.key == data.required_feature
            )
        )
        if feature is None:
            raise UnknownFeature(f"product {product.id} has no feature {data.required_feature!r}")


def _latest(session: Session, class_id: str) -> FirmwarePackage | None:
    return session.scalar(
        select(FirmwarePackage)
        .where(FirmwarePackage.device_class_id == class_id)
        .order_by(FirmwarePackage.sequence.desc())
        .limit(1)
    )


def _check_version(session: Session, class_id: str, version: Version, text: str) -> int:
    """Refuse duplicates and downgrades; returns the next sequence number."""
    taken = session.scalar(
        select(FirmwarePackage.id).where(
            FirmwarePackage.device_class_id == class_id, FirmwarePackage.version == text
        )
    )
    if taken is not None:
        raise DuplicateVersion(f"version {text} already exists for this device class")
    latest = _latest(session, class_id)
    if latest is None:
        return 1
    if not version > parse_version(latest.version):
        raise VersionNotNewer(
            f"version {text} is not newer than the class's latest {latest.version}"
        )
    return latest.sequence + 1


def validate_upload(
    session: Session, tenant_id: str, data: PackageInput, limits: UploadLimits
) -> Version:
    """Every check that needs no payload (step 1); returns the parsed version.

    Raises:
        UnknownDeviceClass, InvalidVersion, DuplicateVersion, VersionNotNewer,
        UnknownProduct, UnknownFeature, InvalidChunkSize.
    """
    device_class = _device_class(session, tenant_id, data.device_class_id)
    version = parse_version(data.version)
    chunk_size_candidates(data.chunk_size, limits.max_payload_bytes)
    _check_gate(session, tenant_id, data)
    _check_version(session, device_class.id, version, data.version)
    return version


@dataclass(frozen=True, slots=True)
class Uploader:
    """What an upload needs besides the form and the payload."""

    store: BlobStore
    signer: Signer
    limits: UploadLimits = UploadLimits()


def create_package(
    session: Session,
    *,
    tenant_id: str,
    actor: str,
    now: datetime,
    data: PackageInput,
    payload: BinaryIO,
    uploader: Uploader,
) -> FirmwarePackage:
    """Validate, store the payload, sign its envelope and add the package row.

    The caller commits, and calls :func:`discard_blob` if the commit fails.
    On any error raised here the blob is already removed.

    Raises:
        Every error of :func:`validate_upload`; PackageTooLarge; EmptyPayload;
        BlobError.
    """
    version = validate_upload(session, tenant_id, data, uploader.limits)
    blob = uploader.store.put(payload, max_size=uploader.limits.max_bytes)
    try:
        package = _package_row(
            session, tenant_id=tenant_id, now=now, data=data, version=version, blob=blob,
            uploader=uploader,
        )  # fmt: skip
    except BaseException:
        uploader.store.delete(blob.key)
        raise
    _audit_upload(session, package, actor, now)
    return package


def _package_row(
    session: Session,
    *,
    tenant_id: str,
    now: datetime,
    data: PackageInput,
    version: Version,
    blob: BlobInfo,
    uploader: Uploader,
) -> FirmwarePackage:
    if blob.size == 0:
        raise EmptyPayload("the firmware payload is empty")
    device_class = _device_class(session, tenant_id, data.device_class_id, lock=True)
    sequence = _check_version(session, device_class.id, version, data.version)
    package_id = str(uuid.uuid4())
    envelope, chunk_size, manifest = _signed_envelope(
        uploader, blob, package_id=package_id, sequence=sequence, device_class=device_class,
        chunk_size=data.chunk_size,
    )  # fmt: skip
    package = FirmwarePackage(
        id=package_id,
        tenant_id=tenant_id,
        device_class_id=device_class.id,
        version=data.version,
        sequence=sequence,
        size=blob.size,
        sha256=blob.sha256,
        chunk_size=chunk_size,
        chunk_count=-(-blob.size // chunk_size),
        blob_key=blob.key,
        envelope=envelope,
        manifest_digest=manifest.manifest_digest.hex(),
        release_notes=data.release_notes,
        required_product_id=data.required_product_id,
        required_feature=data.required_feature,
        created_at=now,
    )
    try:
        with session.begin_nested():
            session.add(package)
    except IntegrityError as exc:  # a concurrent upload took the version or sequence
        raise DuplicateVersion(f"version {data.version} or its sequence was just taken") from exc
    return package


def _signed_envelope(
    uploader: Uploader,
    blob: BlobInfo,
    *,
    package_id: str,
    sequence: int,
    device_class: DeviceClass,
    chunk_size: int | None,
) -> tuple[bytes, int, suit.SuitManifest]:
    """Read the stored payload back, build and sign its envelope, and verify it."""
    image = uploader.store.read_range(blob.key, 0, blob.size)
    if not hmac.compare_digest(hashlib.sha256(image).hexdigest(), blob.sha256):
        raise BlobError("the stored payload does not match what was uploaded")
    envelope, used = build_package_envelope(
        package_id=package_id,
        sequence=sequence,
        vendor_id=device_class.vendor_id,
        class_id=device_class.class_id,
        image=image,
        signer=uploader.signer,
        requested_chunk_size=chunk_size,
        max_payload_bytes=uploader.limits.max_payload_bytes,
    )
    return envelope, used, self_check(envelope, uploader.signer)


def _audit_upload(session: Session, package: FirmwarePackage, actor: str, now: datetime) -> None:
    record(
        session,
        tenant_id=package.tenant_id,
        actor=actor,
        action="firmware.package.create",
        target_type="firmware_package",
        target_id=package.id,
        now=now,
        detail={
            "device_class_id": package.device_class_id,
            "version": package.version,
            "sequence": package.sequence,
            "size": package.size,
            "sha256": package.sha256,
            "required_product_id": package.required_product_id,
            "required_feature": package.required_feature,
        },
    )


def self_check(envelope: bytes, signer: Signer) -> suit.SuitManifest:
    """Verify a freshly built envelope with the signer's own public key.

    A signer that misbehaves (an HSM returning garbage, a wrong key) is caught
    here, before any device sees the envelope.
    """
    key = CoseKey.ed25519(signer.kid, signer.public_key_bytes())
    return suit.inspect_envelope(envelope, [key])


def discard_blob(store: BlobStore, key: str) -> None:
    """Remove a blob whose package row was not committed (logged, never raises)."""
    try:
        store.delete(key)
    except (OSError, BlobError):
        log.exception("could not remove blob %s; the orphan sweep will retry", key)


def get_package(session: Session, tenant_id: str, package_id: str) -> FirmwarePackage:
    """The tenant's package ``package_id``.

    Raises:
        NotFound: no such package for this tenant.
    """
    package = session.get(FirmwarePackage, package_id)
    if package is None or package.tenant_id != tenant_id:
        raise NotFound(f"firmware package {package_id} not found")
    return package


def list_packages(
    session: Session,
    tenant_id: str,
    *,
    device_class_id: str | None,
    limit: int,
    offset: int,
) -> tuple[list[FirmwarePackage], int]:
    """A page of the tenant's packages, newest sequence first."""
    query = select(FirmwarePackage).where(FirmwarePackage.tenant_id == tenant_id)
    if device_class_id is not None:
        query = query.where(FirmwarePackage.device_class_id == device_class_id)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = session.scalars(
        query.order_by(FirmwarePackage.created_at.desc(), FirmwarePackage.sequence.desc())
        .limit(limit)
        .offset(offset)
    )
    return list(rows), total


def sweep_orphans(
    session: Session, store: BlobStore, now: datetime, grace: timedelta = ORPHAN_GRACE
) -> int:
    """Delete blobs no package references, and stale temp files; returns how many.

    Only blobs older than ``grace`` are touched, so an upload between its blob
    write and its commit is never swept.
    """
    referenced = set(session.scalars(select(FirmwarePackage.blob_key)))
    cutoff = now - grace
    removed = store.sweep_temporary(cutoff)
    for key, created in store.list_blobs():
        if key not in referenced and created < cutoff:
            store.delete(key)
            removed += 1
            log.info("removed orphaned firmware blob %s", key)
    return removed
