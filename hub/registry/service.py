"""Registry business rules: API keys, products, device classes, devices, claim batches.

Every function takes the session, the caller's ``tenant_id``, an audit
``actor`` and the time ``now``; it filters every query by tenant (another
tenant's object is indistinguishable from a missing one), raises
:class:`~hub.errors.HubError` subclasses, records an audit event in the same
transaction for every change, and never commits.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import secrets
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from pydantic import ValidationError
from sqlalchemy import ColumnElement, Select, delete, exists, func, literal, select
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.sql.expression import cast

from hub.audit.service import record
from hub.errors import (
    ClaimRefused,
    Conflict,
    HubError,
    NotFound,
    Unauthenticated,
    ValidationFailed,
)
from hub.registry.models import (
    ApiKey,
    ClaimBatch,
    ClaimBatchDevice,
    ClaimNonce,
    Device,
    DeviceClass,
    DeviceCredential,
    Product,
)
from hub.registry.schemas import (
    ApiKeyCreate,
    ClaimBatchCreate,
    DeviceClassCreate,
    DeviceClassUpdate,
    DeviceCreate,
    DeviceUpdate,
    ImportResult,
    ImportRowResult,
    ProductCreate,
    ProductUpdate,
    decode_public_key,
)
from protocols.ids import DEVICE_ID_PREFIX

T = TypeVar("T")

API_KEY_PREFIX = "hubk"
CLAIM_TOKEN_PREFIX = "hubc"  # noqa: S105 - a token prefix, not a secret
# Throttle for ``last_used_at`` so reads do not each cost a write.
LAST_USED_RESOLUTION = timedelta(minutes=1)
_IN_CHUNK = 500


class UnknownSerials(ValidationFailed):
    """Some serials of a claim batch do not name devices of the tenant."""

    code = "unknown_serials"

    def __init__(self, serials: Sequence[str]) -> None:
        shown = ", ".join(serials[:20]) + (" ..." if len(serials) > 20 else "")
        super().__init__(f"{len(serials)} unknown serial(s): {shown}")
        self.details: dict[str, Any] = {"serials": list(serials)}


class UnknownDeviceClass(ValidationFailed):
    """The device class id names no class of the caller's tenant."""

    code = "unknown_device_class"


class DuplicateSerial(Conflict):
    """The tenant already has a device with this serial."""

    code = "duplicate_serial"


class DuplicatePublicKey(Conflict):
    """Another device is registered with the same public key."""

    code = "duplicate_public_key"


class MalformedCsv(ValidationFailed):
    """The import file is not parseable CSV or lacks the required header."""

    code = "malformed_csv"


class PayloadTooLarge(ValidationFailed):
    """The import is larger than the hub accepts in one request."""

    code = "payload_too_large"
    http_status = 413


# ---------------------------------------------------------------- helpers


def sha256_hex(text: str | bytes) -> str:
    """Hex SHA-256 of ``text`` (UTF-8 for strings)."""
    data = text.encode() if isinstance(text, str) else text
    return hashlib.sha256(data).hexdigest()


def new_public_id() -> str:
    """A short random public id (16 hex chars) for keys and batches."""
    return secrets.token_hex(8)


def new_device_id() -> str:
    """A hub-issued device id: ``dev-`` and 20 lowercase hex characters."""
    return DEVICE_ID_PREFIX + secrets.token_hex(10)


def make_token(prefix: str, public_id: str) -> tuple[str, str]:
    """Mint ``<prefix>_<public_id>_<secret>``; returns the token and its secret."""
    secret = secrets.token_urlsafe(32)
    return f"{prefix}_{public_id}_{secret}", secret


def parse_token(prefix: str, token: str) -> tuple[str, str] | None:
    """Split a token into ``(public_id, secret)``, or ``None`` if malformed."""
    parts = token.split("_", 2)
    if len(parts) != 3 or parts[0] != prefix or not parts[1] or not parts[2]:
        return None
    return parts[1], parts[2]


def _secret_matches(secret: str, stored_hash: str | None) -> bool:
    # Hash even when there is nothing to compare with, so a missing id costs
    # the same time as a wrong secret.
    actual = sha256_hex(secret)
    return hmac.compare_digest(actual, stored_hash or "0" * 64) and stored_hash is not None


def add_unique(session: Session, obj: object, message: str) -> None:
    """Insert ``obj`` inside a savepoint; a unique-key clash becomes Conflict."""
    try:
        with session.begin_nested():
            session.add(obj)
    except IntegrityError as exc:
        raise Conflict(message) from exc


def _page(session: Session, query: Select[Any], limit: int, offset: int) -> tuple[list[Any], int]:
    total = session.scalar(select(func.count()).select_from(query.order_by(None).subquery()))
    items = list(session.scalars(query.limit(limit).offset(offset)))
    return items, total or 0


def _get(session: Session, model: type[T], tenant_id: str, obj_id: str, what: str) -> T:
    obj = session.get(model, obj_id)
    if obj is None or getattr(obj, "tenant_id", None) != tenant_id:
        raise NotFound(f"{what} {obj_id} not found")
    return obj


# ---------------------------------------------------------------- API keys


def create_api_key(
    session: Session, *, tenant_id: str, actor: str, now: datetime, data: ApiKeyCreate
) -> tuple[ApiKey, str]:
    """Create an API key; returns the row and the full key (shown once)."""
    key_id = new_public_id()
    token, secret = make_token(API_KEY_PREFIX, key_id)
    key = ApiKey(
        id=key_id,
        tenant_id=tenant_id,
        name=data.name,
        role=data.role,
        secret_hash=sha256_hex(secret),
        created_at=now,
    )
    session.add(key)
    record(
        session,
        tenant_id=tenant_id,
        actor=actor,
        action="api_key.create",
        target_type="api_key",
        target_id=key_id,
        now=now,
        detail={"name": data.name, "role": data.role},
    )
    session.flush()
    return key, token


def authenticate_api_key(session: Session, token: str, now: datetime) -> ApiKey:
    """Resolve a presented API key to its row.

    Raises:
        Unauthenticated: malformed, unknown, wrong secret or revoked.
    """
    parsed = parse_token(API_KEY_PREFIX, token)
    key = session.get(ApiKey, parsed[0]) if parsed else None
    secret = parsed[1] if parsed else token
    if not _secret_matches(secret, key.secret_hash if key else None) or key is None:
        raise Unauthenticated("invalid API key")
    if key.revoked_at is not None:
        raise Unauthenticated("API key revoked")
    if key.last_used_at is None or now - key.last_used_at >= LAST_USED_RESOLUTION:
        key.last_used_at = now
    return key


def list_api_keys(
    session: Session, tenant_id: str, *, limit: int, offset: int
) -> tuple[list[ApiKey], int]:
    """A page of the tenant's API keys, oldest first."""
    query = select(ApiKey).where(ApiKey.tenant_id == tenant_id)
    return _page(session, query.order_by(ApiKey.created_at, ApiKey.id), limit, offset)


def revoke_api_key(
    session: Session, *, tenant_id: str, actor: str, now: datetime, key_id: str
) -> ApiKey:
    """Revoke a key (idempotent). Refuses to revoke the tenant's last admin key.

    Raises:
        NotFound: no such key for this tenant.
        Conflict: it is the last active admin key (the tenant would be locked out).
    """
    key = _get(session, ApiKey, tenant_id, key_id, "API key")
    if key.revoked_at is not None:
        return key
    if key.role == "admin":
        admins = session.scalar(
            select(func.count()).where(
                ApiKey.tenant_id == tenant_id, ApiKey.role == "admin", ApiKey.revoked_at.is_(None)
            )
        )
        if (admins or 0) <= 1:
            raise Conflict("cannot revoke the last active admin key")
    key.revoked_at = now
    record(
        session,
        tenant_id=tenant_id,
        actor=actor,
        action="api_key.revoke",
        target_type="api_key",
        target_id=key_id,
        now=now,
    )
    return key


# ---------------------------------------------------------------- products


def create_product(
    session: Session, *, tenant_id: str, actor: str, now: datetime, data: ProductCreate
) -> Product:
    """Create a product; SKUs are unique per tenant.

    Raises:
        Conflict: the SKU is taken.
    """
    product = Product(
        id=str(uuid.uuid4()),
        tenant_id=tenant_id,
        sku=data.sku,
        name=data.name,
        description=data.description,
        created_at=now,
    )
    add_unique(session, product, f"a product with SKU {data.sku} already exists")
    record(
        session,
        tenant_id=tenant_id,
        actor=actor,
        action="product.create",
        target_type="product",
        target_id=product.id,
        now=now,
        detail={"sku": data.sku},
    )
    return product


def get_product(session: Session, tenant_id: str, product_id: str) -> Product:
    """The tenant's product ``product_id``.

    Raises:
        NotFound: no such product for this tenant.
    """
    return _get(session, Product, tenant_id, product_id, "product")


def list_products(
    session: Session, tenant_id: str, *, limit: int, offset: int
) -> tuple[list[Product], int]:
    """A page of the tenant's products ordered by SKU."""
    query = select(Product).where(Product.tenant_id == tenant_id).order_by(Product.sku)
    return _page(session, query, limit, offset)


def update_product(
    session: Session,
    *,
    tenant_id: str,
    actor: str,
    now: datetime,
    product_id: str,
    data: ProductUpdate,
) -> Product:
    """Apply the given fields to a product.

    Raises:
        NotFound: no such product for this tenant.
    """
    product = get_product(session, tenant_id, product_id)
    changes = data.model_dump(exclude_unset=True, exclude_none=True)
    for field, value in changes.items():
        setattr(product, field, value)
    if changes:
        record(
            session,
            tenant_id=tenant_id,
            actor=actor,
            action="product.update",
            target_type="product",
            target_id=product.id,
            now=now,
            detail={"fields": sorted(changes)},
        )
    return product


# ---------------------------------------------------------------- device classes


def create_device_class(
    session: Session, *, tenant_id: str, actor: str, now: datetime, data: DeviceClassCreate
) -> DeviceClass:
    """Create a device class; ``(vendor_id, class_id)`` is unique per tenant.

    Raises:
        Conflict: that vendor/class pair is registered already.
    """
    device_class = DeviceClass(
        id=str(uuid.uuid4()),
        tenant_id=tenant_id,
        name=data.name,
        vendor_id=str(data.vendor_id),
        class_id=str(data.class_id),
        created_at=now,
    )
    add_unique(session, device_class, "a device class with this vendor_id/class_id exists")
    record(
        session,
        tenant_id=tenant_id,
        actor=actor,
        action="device_class.create",
        target_type="device_class",
        target_id=device_class.id,
        now=now,
        detail={"name": data.name},
    )
    return device_class


def get_device_class(session: Session, tenant_id: str, class_id: str) -> DeviceClass:
    """The tenant's device class ``class_id``.

    Raises:
        NotFound: no such class for this tenant.
    """
    return _get(session, DeviceClass, tenant_id, class_id, "device class")


def list_device_classes(
    session: Session, tenant_id: str, *, limit: int, offset: int
) -> tuple[list[DeviceClass], int]:
    """A page of the tenant's device classes ordered by name."""
    query = select(DeviceClass).where(DeviceClass.tenant_id == tenant_id)
    return _page(session, query.order_by(DeviceClass.name, DeviceClass.id), limit, offset)


def update_device_class(
    session: Session,
    *,
    tenant_id: str,
    actor: str,
    now: datetime,
    class_id: str,
    data: DeviceClassUpdate,
) -> DeviceClass:
    """Rename a device class.

    Raises:
        NotFound: no such class for this tenant.
    """
    device_class = get_device_class(session, tenant_id, class_id)
    if data.name is not None and data.name != device_class.name:
        device_class.name = data.name
        record(
            session,
            tenant_id=tenant_id,
            actor=actor,
            action="device_class.update",
            target_type="device_class",
            target_id=class_id,
            now=now,
            detail={"fields": ["name"]},
        )
    return device_class


# ---------------------------------------------------------------- devices


@dataclass(frozen=True, slots=True)
class DeviceFilter:
    """Optional device list filters; ``None`` means no filter."""

    device_class_id: str | None = None
    status: str | None = None
    tag: str | None = None
    serial_prefix: str | None = None
    online: bool | None = None


def create_device(
    session: Session, *, tenant_id: str, actor: str, now: datetime, data: DeviceCreate
) -> Device:
    """Register a device under a hub-issued id.

    Raises:
        ValidationFailed: the device class is unknown to this tenant.
        Conflict: the serial or the public key is registered already.
    """
    device_class = session.get(DeviceClass, data.device_class_id)
    if device_class is None or device_class.tenant_id != tenant_id:
        raise UnknownDeviceClass(f"unknown device class {data.device_class_id}")
    raw_key = decode_public_key(data.public_key) if data.public_key else None
    fingerprint = sha256_hex(raw_key) if raw_key else None
    _check_device_unique(session, tenant_id, data.serial, fingerprint)
    device = Device(
        id=new_device_id(),
        tenant_id=tenant_id,
        serial=data.serial,
        device_class_id=data.device_class_id,
        tags=list(data.tags),
        public_key=raw_key,
        public_key_fingerprint=fingerprint,
        status="registered",
        created_at=now,
        online=False,
    )
    add_unique(session, device, f"device {data.serial} conflicts with an existing device")
    record(
        session,
        tenant_id=tenant_id,
        actor=actor,
        action="device.create",
        target_type="device",
        target_id=device.id,
        now=now,
        detail={"serial": data.serial},
    )
    return device


def _check_device_unique(
    session: Session, tenant_id: str, serial: str, fingerprint: str | None
) -> None:
    taken = select(Device.id).where(Device.tenant_id == tenant_id, Device.serial == serial)
    if session.scalar(taken) is not None:
        raise DuplicateSerial(f"a device with serial {serial} already exists")
    if fingerprint is not None:
        # Globally unique: one physical key is one device. The message names
        # no tenant, so it reveals nothing beyond "this key is in use".
        used = select(Device.id).where(Device.public_key_fingerprint == fingerprint)
        if session.scalar(used) is not None:
            raise DuplicatePublicKey("this public key is already registered")


def get_device(session: Session, tenant_id: str, device_id: str) -> Device:
    """The tenant's device ``device_id``.

    Raises:
        NotFound: no such device for this tenant.
    """
    return _get(session, Device, tenant_id, device_id, "device")


def _tag_clause(session: Session, tag: str) -> ColumnElement[bool]:
    # JSON containment has no portable spelling: jsonb ``@>`` on PostgreSQL,
    # ``json_each`` on SQLite.
    if session.get_bind().dialect.name == "postgresql":
        return cast(Device.tags, JSONB).contains([tag])
    each = func.json_each(Device.tags).table_valued("value")
    return exists(select(literal(1)).select_from(each).where(each.c.value == tag))


def list_devices(
    session: Session, tenant_id: str, flt: DeviceFilter, *, limit: int, offset: int
) -> tuple[list[Device], int]:
    """A page of the tenant's devices matching ``flt``, oldest first."""
    query = select(Device).where(Device.tenant_id == tenant_id)
    if flt.device_class_id is not None:
        query = query.where(Device.device_class_id == flt.device_class_id)
    if flt.status is not None:
        query = query.where(Device.status == flt.status)
    if flt.online is not None:
        query = query.where(Device.online.is_(flt.online))
    if flt.serial_prefix:
        query = query.where(Device.serial.startswith(flt.serial_prefix, autoescape=True))
    if flt.tag is not None:
        query = query.where(_tag_clause(session, flt.tag))
    return _page(session, query.order_by(Device.created_at, Device.id), limit, offset)


def update_device(
    session: Session,
    *,
    tenant_id: str,
    actor: str,
    now: datetime,
    device_id: str,
    data: DeviceUpdate,
) -> Device:
    """Change a device's tags and/or enable or disable it.

    Raises:
        NotFound: no such device for this tenant.
        Conflict: asked to move a claimed device to ``registered`` (use reset-claim).
    """
    device = get_device(session, tenant_id, device_id)
    detail: dict[str, Any] = {}
    if data.tags is not None and data.tags != device.tags:
        detail["tags"] = {"from": device.tags, "to": data.tags}
        device.tags = list(data.tags)
    if data.status is not None and data.status != device.status:
        detail["status"] = {"from": device.status, "to": _new_status(session, device, data)}
        device.status = detail["status"]["to"]
    if detail:
        record(
            session,
            tenant_id=tenant_id,
            actor=actor,
            action="device.update",
            target_type="device",
            target_id=device_id,
            now=now,
            detail=detail,
        )
    return device


def _new_status(session: Session, device: Device, data: DeviceUpdate) -> str:
    if data.status == "disabled":
        return "disabled"
    if device.status == "claimed":
        raise Conflict("device is claimed; use reset-claim to make it claimable again")
    # Re-enabling: a device that still holds MQTT credentials goes back to claimed.
    has_credential = session.get(DeviceCredential, device.id) is not None
    return "claimed" if has_credential else "registered"


def reset_claim(
    session: Session,
    *,
    tenant_id: str,
    actor: str,
    now: datetime,
    device_id: str,
    forget_key: bool = False,
) -> Device:
    """Delete a device's MQTT credential so it can claim again.

    A disabled device stays disabled (re-enable it to let it claim). With
    ``forget_key`` the device's public key is dropped too, so a device that was
    factory-reset (and generated a new key) can claim with a batch token; keep
    it for devices whose key the manufacturer pre-registered.

    Raises:
        NotFound: no such device for this tenant.
    """
    device = get_device(session, tenant_id, device_id)
    deleted = session.execute(
        delete(DeviceCredential).where(DeviceCredential.device_id == device.id)
    ).rowcount  # type: ignore[attr-defined]
    previous = device.status
    if device.status != "disabled":
        device.status = "registered"
    device.claimed_at = None
    if forget_key:
        device.public_key = None
        device.public_key_fingerprint = None
    record(
        session,
        tenant_id=tenant_id,
        actor=actor,
        action="device.reset_claim",
        target_type="device",
        target_id=device_id,
        now=now,
        detail={
            "previous_status": previous,
            "credential_deleted": bool(deleted),
            "key_forgotten": forget_key,
        },
    )
    return device


# ---------------------------------------------------------------- claim batches


def _devices_by_serial(session: Session, tenant_id: str, serials: Iterable[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    wanted = list(serials)
    for start in range(0, len(wanted), _IN_CHUNK):
        chunk = wanted[start : start + _IN_CHUNK]
        rows = session.execute(
            select(Device.serial, Device.id).where(
                Device.tenant_id == tenant_id, Device.serial.in_(chunk)
            )
        )
        found.update({serial: device_id for serial, device_id in rows})
    return found


def create_claim_batch(
    session: Session, *, tenant_id: str, actor: str, now: datetime, data: ClaimBatchCreate
) -> tuple[ClaimBatch, str, int]:
    """Create a claim batch; returns the row, the token (shown once) and its size.

    Raises:
        UnknownSerials: some serials name no device of this tenant.
    """
    serials = list(dict.fromkeys(data.serials))
    found = _devices_by_serial(session, tenant_id, serials)
    missing = [serial for serial in serials if serial not in found]
    if missing:
        raise UnknownSerials(missing)
    batch_id = new_public_id()
    token, secret = make_token(CLAIM_TOKEN_PREFIX, batch_id)
    batch = ClaimBatch(
        id=batch_id,
        tenant_id=tenant_id,
        name=data.name,
        token_hash=sha256_hex(secret),
        created_at=now,
        expires_at=now + timedelta(seconds=data.ttl_seconds),
    )
    session.add(batch)
    session.flush()
    session.add_all(ClaimBatchDevice(batch_id=batch_id, device_id=d) for d in found.values())
    record(
        session,
        tenant_id=tenant_id,
        actor=actor,
        action="claim_batch.create",
        target_type="claim_batch",
        target_id=batch_id,
        now=now,
        detail={
            "name": data.name,
            "devices": len(found),
            "expires_at": batch.expires_at.isoformat(),
        },
    )
    session.flush()
    return batch, token, len(found)


def claim_batch_sizes(session: Session, batch_ids: Sequence[str]) -> dict[str, int]:
    """Number of devices in each of ``batch_ids``."""
    if not batch_ids:
        return {}
    rows = session.execute(
        select(ClaimBatchDevice.batch_id, func.count())
        .where(ClaimBatchDevice.batch_id.in_(batch_ids))
        .group_by(ClaimBatchDevice.batch_id)
    )
    return {batch_id: count for batch_id, count in rows}


def get_claim_batch(session: Session, tenant_id: str, batch_id: str) -> ClaimBatch:
    """The tenant's claim batch ``batch_id``.

    Raises:
        NotFound: no such batch for this tenant.
    """
    return _get(session, ClaimBatch, tenant_id, batch_id, "claim batch")


def list_claim_batches(
    session: Session, tenant_id: str, *, limit: int, offset: int
) -> tuple[list[ClaimBatch], int]:
    """A page of the tenant's claim batches, newest first."""
    query = select(ClaimBatch).where(ClaimBatch.tenant_id == tenant_id)
    return _page(
        session, query.order_by(ClaimBatch.created_at.desc(), ClaimBatch.id), limit, offset
    )


def revoke_claim_batch(
    session: Session, *, tenant_id: str, actor: str, now: datetime, batch_id: str
) -> ClaimBatch:
    """Revoke a claim batch's token (idempotent).

    Raises:
        NotFound: no such batch for this tenant.
    """
    batch = get_claim_batch(session, tenant_id, batch_id)
    if batch.revoked_at is None:
        batch.revoked_at = now
        record(
            session,
            tenant_id=tenant_id,
            actor=actor,
            action="claim_batch.revoke",
            target_type="claim_batch",
            target_id=batch_id,
            now=now,
        )
    return batch


def resolve_claim_batch(session: Session, token: str, device_id: str, now: datetime) -> ClaimBatch:
    """Check a claim token presented by ``device_id`` (used by the claim flow).

    Raises:
        ClaimRefused: ``bad_token`` (malformed, unknown or wrong secret, or the
            device is not in the batch), ``token_revoked`` or ``token_expired``.
    """
    parsed = parse_token(CLAIM_TOKEN_PREFIX, token)
    batch = session.get(ClaimBatch, parsed[0]) if parsed else None
    secret = parsed[1] if parsed else token
    if not _secret_matches(secret, batch.token_hash if batch else None) or batch is None:
        raise ClaimRefused("bad_token", "claim token not recognised")
    member = session.get(ClaimBatchDevice, (batch.id, device_id))
    device = session.get(Device, device_id)
    if member is None or device is None or device.tenant_id != batch.tenant_id:
        raise ClaimRefused("bad_token", "claim token not valid for this device")
    if batch.revoked_at is not None:
        raise ClaimRefused("token_revoked", "claim token revoked")
    if now >= batch.expires_at:
        raise ClaimRefused("token_expired", "claim token expired")
    return batch


def remember_nonce(session: Session, nonce: str, device_id: str, now: datetime) -> None:
    """Store a claim nonce, refusing one seen before (replay protection).

    Raises:
        ClaimRefused: ``replayed_nonce`` when the nonce was already used.
    """
    if session.get(ClaimNonce, nonce) is not None:
        raise ClaimRefused("replayed_nonce", "claim nonce already used")
    try:
        with session.begin_nested():
            session.add(ClaimNonce(nonce=nonce, device_id=device_id, seen_at=now))
    except IntegrityError as exc:
        raise ClaimRefused("replayed_nonce", "claim nonce already used") from exc


# ---------------------------------------------------------------- bulk import

MAX_IMPORT_ROWS = 10_000
MAX_IMPORT_BYTES = 4 * 1024 * 1024
IMPORT_COLUMNS = ("serial", "device_class_id", "tags", "public_key")
_REQUIRED_COLUMNS = frozenset({"serial", "device_class_id"})


def _read_csv(text: str, max_rows: int) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Parse the whole file first so structural errors reject it before any insert."""
    reader = csv.reader(io.StringIO(text.removeprefix("\ufeff")), strict=True)
    try:
        header = [name.strip().lower() for name in next(reader, [])]
        rows: list[tuple[int, list[str]]] = []
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            if len(rows) >= max_rows:
                raise PayloadTooLarge(f"at most {max_rows} rows per import")
            rows.append((reader.line_num, row))
    except csv.Error as exc:
        raise MalformedCsv(f"malformed CSV at line {reader.line_num}: {exc}") from exc
    unknown = [name for name in header if name not in IMPORT_COLUMNS]
    if not set(header) >= _REQUIRED_COLUMNS or unknown or len(set(header)) != len(header):
        raise MalformedCsv(
            "header must be serial,device_class_id[,tags][,public_key]; got " + ",".join(header)
        )
    return header, rows


def _row_error(line: int, serial: str | None, code: str, message: str) -> ImportRowResult:
    return ImportRowResult(
        line=line, serial=serial, status="error", error_code=code, message=message
    )


def _parse_row(header: list[str], row: list[str]) -> DeviceCreate:
    values = dict(zip(header, (cell.strip() for cell in row), strict=True))
    tags = [tag.strip() for tag in values.get("tags", "").split(";") if tag.strip()]
    return DeviceCreate.model_validate(
        {
            "serial": values["serial"],
            "device_class_id": values["device_class_id"],
            "tags": tags,
            "public_key": values.get("public_key") or None,
        }
    )


def _import_row(
    session: Session,
    *,
    tenant_id: str,
    actor: str,
    now: datetime,
    line: int,
    header: list[str],
    row: list[str],
) -> ImportRowResult:
    serial = row[header.index("serial")].strip() if len(row) > header.index("serial") else None
    if len(row) != len(header):
        return _row_error(line, serial, "malformed_row", f"expected {len(header)} fields")
    try:
        data = _parse_row(header, row)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else "row"
        return _row_error(line, serial, f"invalid_{field}", f"{field}: {first['msg']}")
    try:
        # One savepoint per row: a bad row is undone alone, the rest stays.
        with session.begin_nested():
            device = create_device(session, tenant_id=tenant_id, actor=actor, now=now, data=data)
    except HubError as exc:
        return _row_error(line, serial, exc.code, str(exc))
    return ImportRowResult(line=line, serial=serial, status="created", device_id=device.id)


def import_devices(
    session: Session,
    *,
    tenant_id: str,
    actor: str,
    now: datetime,
    text: str,
    max_rows: int = MAX_IMPORT_ROWS,
) -> ImportResult:
    """Import devices from CSV, each row validated and inserted independently.

    The header is ``serial,device_class_id,tags,public_key`` (``tags`` and
    ``public_key`` optional; tags separated by ``;``; key in base64).

    Raises:
        MalformedCsv: unparseable file or wrong header (nothing is imported).
        PayloadTooLarge: more than ``max_rows`` data rows (nothing is imported).
    """
    header, rows = _read_csv(text, max_rows)
    results = [
        _import_row(
            session, tenant_id=tenant_id, actor=actor, now=now, line=line, header=header, row=row
        )
        for line, row in rows
    ]
    created = sum(1 for result in results if result.status == "created")
    record(
        session,
        tenant_id=tenant_id,
        actor=actor,
        action="device.import",
        target_type="device",
        target_id="csv",
        now=now,
        detail={"created": created, "failed": len(results) - created},
    )
    return ImportResult(created=created, failed=len(results) - created, rows=results)
