"""Request and response bodies of the registry API (``XCreate/XUpdate/XPublic``)."""

from __future__ import annotations

import base64
import binascii
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from protocols.ids import is_valid_id

Role = Literal["admin", "operator", "viewer"]
DeviceStatus = Literal["registered", "claimed", "disabled"]
MAX_TAGS = 32
MAX_CLAIM_BATCH_DEVICES = 10_000
ED25519_KEY_BYTES = 32


def check_identifier(value: str) -> str:
    """Validate an id-like field (serial, SKU, tag): topic- and username-safe."""
    if not is_valid_id(value):
        raise ValueError(
            "must be 1-64 characters of letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return value


def check_tags(tags: list[str]) -> list[str]:
    """Validate tags and drop duplicates, keeping their order."""
    unique = list(dict.fromkeys(check_identifier(tag) for tag in tags))
    if len(unique) > MAX_TAGS:
        raise ValueError(f"at most {MAX_TAGS} tags")
    return unique


def decode_public_key(text: str) -> bytes:
    """Decode a base64 raw Ed25519 public key and check that it loads.

    Raises:
        ValueError: when it is not base64, not 32 bytes, or not a valid key.
    """
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("public_key is not valid base64") from exc
    if len(raw) != ED25519_KEY_BYTES:
        raise ValueError(f"public_key must be {ED25519_KEY_BYTES} raw bytes, got {len(raw)}")
    try:
        Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as exc:
        raise ValueError("public_key is not a valid Ed25519 key") from exc
    return raw


def _check_public_key(text: str | None) -> str | None:
    if text is None or not text.strip():
        return None
    return base64.b64encode(decode_public_key(text)).decode()


Identifier = Annotated[str, AfterValidator(check_identifier)]
Tags = Annotated[list[str], AfterValidator(check_tags)]
Name = Annotated[str, Field(min_length=1, max_length=200)]


class _Public(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class WhoAmI(BaseModel):
    """Who the API key belongs to."""

    tenant_id: str
    tenant_name: str
    key_id: str
    role: Role


class ApiKeyCreate(BaseModel):
    """New API key."""

    name: Name
    role: Role = "viewer"


class ApiKeyPublic(_Public):
    """An API key as listed; never its secret."""

    id: str
    name: str
    role: Role
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None


class ApiKeyCreated(ApiKeyPublic):
    """A freshly created API key, with the full key shown this one time."""

    key: str


class ProductCreate(BaseModel):
    """New product."""

    sku: Identifier
    name: Name
    description: str = Field(default="", max_length=4000)


class ProductUpdate(BaseModel):
    """Product changes; omitted fields stay as they are."""

    name: Name | None = None
    description: str | None = Field(default=None, max_length=4000)


class ProductPublic(_Public):
    """A product."""

    id: str
    sku: str
    name: str
    description: str
    created_at: datetime


class DeviceClassCreate(BaseModel):
    """New device class; vendor and class ids are SUIT-style UUIDs."""

    name: Name
    vendor_id: uuid.UUID
    class_id: uuid.UUID


class DeviceClassUpdate(BaseModel):
    """Device class changes (identifiers are immutable: firmware binds to them)."""

    name: Name | None = None


class DeviceClassPublic(_Public):
    """A device class."""

    id: str
    name: str
    vendor_id: str
    class_id: str
    created_at: datetime


class DeviceCreate(BaseModel):
    """New device."""

    serial: Identifier
    device_class_id: str = Field(min_length=1, max_length=36)
    tags: Tags = Field(default_factory=list)
    public_key: Annotated[str | None, AfterValidator(_check_public_key)] = Field(
        default=None, description="base64 of the raw 32-byte Ed25519 public key"
    )


class DeviceUpdate(BaseModel):
    """Device changes.

    ``status``: ``disabled`` locks the device out; ``registered`` re-enables a
    disabled device (it returns to ``claimed`` if it still holds credentials).
    """

    tags: Tags | None = None
    status: Literal["registered", "disabled"] | None = None


class DevicePublic(_Public):
    """A device."""

    id: str
    serial: str
    device_class_id: str
    tags: list[str]
    public_key: str | None = Field(description="base64 raw Ed25519 public key")
    public_key_fingerprint: str | None
    status: DeviceStatus
    claimed_at: datetime | None
    created_at: datetime
    online: bool
    last_seen_at: datetime | None
    last_connect_at: datetime | None

    @field_validator("public_key", mode="before")
    @classmethod
    def _encode_key(cls, value: Any) -> Any:
        if isinstance(value, bytes):
            return base64.b64encode(value).decode()
        return value


class ImportRowResult(BaseModel):
    """Outcome of one CSV row (``line`` counts the header as line 1)."""

    line: int
    serial: str | None
    status: Literal["created", "error"]
    error_code: str | None = None
    message: str | None = None
    device_id: str | None = None


class ImportResult(BaseModel):
    """Outcome of a bulk device import."""

    created: int
    failed: int
    rows: list[ImportRowResult]


class ClaimBatchCreate(BaseModel):
    """New claim batch for the listed device serials."""

    name: Name
    serials: list[str] = Field(min_length=1, max_length=MAX_CLAIM_BATCH_DEVICES)
    ttl_seconds: int = Field(default=7 * 86400, ge=60, le=366 * 86400)


class ClaimBatchPublic(_Public):
    """A claim batch as listed; never its token."""

    id: str
    name: str
    expires_at: datetime
    created_at: datetime
    revoked_at: datetime | None
    device_count: int


class ClaimBatchCreated(ClaimBatchPublic):
    """A freshly created claim batch, with its token shown this one time."""

    token: str
