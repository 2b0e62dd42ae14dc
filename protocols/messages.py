"""Message dataclasses and their strict CBOR mapping.

Every payload is a CBOR map with small integer keys. Keys 0 and 1 are common
to all messages: ``0`` is the protocol major version ``v`` and ``1`` the
message type ``t`` (a short text). The remaining keys belong to the type and
are declared next to each field (``key=...``). Unknown keys are tolerated so
that minor versions can add fields; an unknown major version is rejected.

``decode_message`` reads untrusted bytes and returns a validated message or
raises a :class:`~protocols.errors.ProtocolError`; ``encode_message`` writes
deterministic CBOR.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from protocols import cbor, firmware_messages, usage_messages
from protocols.errors import MessageError, UnsupportedVersion
from protocols.fields import MAX_TEXT, Message
from protocols.fields import boolean as _bool
from protocols.fields import byte_string as _bytes
from protocols.fields import integer as _int
from protocols.fields import key as _key
from protocols.fields import one_of as _one_of
from protocols.fields import text as _text
from protocols.fields import uint as _uint

PROTOCOL_VERSION = 1
KEY_VERSION = 0
KEY_TYPE = 1
MAX_SECRET_TEXT = 128
MAX_ANCHORS = 8


@dataclass(frozen=True, slots=True)
class TrustAnchor:
    """A public key the device trusts for one signing role.

    Encoded as the array ``[kid: bstr, alg: int, key: bstr, role: tstr]``.
    """

    kid: bytes
    alg: int
    key: bytes
    role: str

    def to_wire(self) -> list[Any]:
        """The CBOR array form."""
        return [self.kid, self.alg, self.key, self.role]

    @classmethod
    def from_wire(cls, value: Any) -> TrustAnchor:
        """Validate and build from the CBOR array form."""
        if not isinstance(value, list) or len(value) != 4:
            raise MessageError("trust anchor must be a 4-element array")
        kid, alg, key, role = value
        return cls(
            kid=_bytes(1, 32)(kid), alg=_int(alg), key=_bytes(32, 133)(key), role=_text(32)(role)
        )


def _anchors(value: Any) -> tuple[TrustAnchor, ...]:
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_ANCHORS:
        raise MessageError(f"anchors must be an array of 1..{MAX_ANCHORS}")
    return tuple(TrustAnchor.from_wire(item) for item in value)


@dataclass(frozen=True, slots=True)
class ClaimRequest(Message):
    """Agent → hub on ``claim/{client_id}/req``: prove the claim credential.

    ``method`` is ``"token"`` (a batch claim token in ``token``; ``pubkey`` is the
    device's freshly generated key) or ``"key"`` (``pubkey`` is the key the
    manufacturer pre-registered). Either way ``sig`` is an Ed25519 signature by
    ``pubkey`` over :meth:`signing_input`, proving possession of the key and
    binding the request to this claim session, this nonce and this time.
    """

    TYPE: ClassVar[str] = "claim"
    serial: str = _key(2, _text(64))
    method: str = _key(3, _text(8))
    pubkey: bytes = _key(5, _bytes(32, 32))
    nonce: bytes = _key(6, _bytes(16, 32))
    ts: int = _key(7, _uint)
    sig: bytes = _key(8, _bytes(64, 64))
    token: str | None = _key(4, _text(MAX_SECRET_TEXT), optional=True)

    def signing_input(self, client_id: str) -> bytes:
        """The exact bytes ``sig`` signs, bound to the claim session's client id."""
        return signing_input_for_claim(
            client_id,
            serial=self.serial,
            method=self.method,
            token=self.token,
            pubkey=self.pubkey,
            nonce=self.nonce,
            ts=self.ts,
        )


def signing_input_for_claim(
    client_id: str,
    *,
    serial: str,
    method: str,
    token: str | None,
    pubkey: bytes,
    nonce: bytes,
    ts: int,
) -> bytes:
    """Deterministic CBOR array signed by a claim request (see docs/protocol.md)."""
    return cbor.encode(["hub-claim-v1", client_id, serial, method, token or "", pubkey, nonce, ts])


@dataclass(frozen=True, slots=True)
class ClaimAccepted(Message):
    """Hub → agent on ``claim/{client_id}/res``: the device's identity."""

    TYPE: ClassVar[str] = "claimed"
    device_id: str = _key(2, _text(64))
    mqtt_username: str = _key(3, _text(64))
    mqtt_password: str = _key(4, _text(MAX_SECRET_TEXT))
    anchors: tuple[TrustAnchor, ...] = _key(5, _anchors)
    server_time: int = _key(6, _uint)


@dataclass(frozen=True, slots=True)
class ErrorReply(Message):
    """Hub → device or claim session: a typed refusal of what it sent."""

    TYPE: ClassVar[str] = "error"
    code: str = _key(2, _text(64))
    message: str = _key(3, _text(MAX_TEXT))
    ref: str | None = _key(4, _text(MAX_TEXT), optional=True)
    # The hub's clock (Unix seconds) on refusals caused by the sender's clock,
    # e.g. ``stale_request``, so a device with a wrong clock can correct it.
    server_time: int | None = _key(5, _uint, optional=True)


@dataclass(frozen=True, slots=True)
class Hello(Message):
    """Device → hub on ``d/{id}/up/hello`` at every connect: asks for its state."""

    TYPE: ClassVar[str] = "hello"
    agent_version: str = _key(2, _text(64))
    manifest_seq: int = _key(3, _uint)
    boot_epoch: int = _key(4, _uint)


@dataclass(frozen=True, slots=True)
class State(Message):
    """Hub → device on ``d/{id}/down/state``: the hub's truth for this device."""

    TYPE: ClassVar[str] = "state"
    device_id: str = _key(2, _text(64))
    server_time: int = _key(3, _uint)
    manifest_seq: int = _key(4, _uint)


@dataclass(frozen=True, slots=True)
class Status(Message):
    """Device → hub on ``d/{id}/up/status``: presence; also the MQTT last will."""

    TYPE: ClassVar[str] = "status"
    online: bool = _key(2, _bool)


MAX_SIGNED_DOCUMENT = 32 * 1024
MAX_ROTATIONS = 16


def _signed_list(value: Any) -> tuple[bytes, ...]:
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_ROTATIONS:
        raise MessageError(f"must be an array of 1..{MAX_ROTATIONS} signed documents")
    return tuple(_bytes(1, 8192)(item) for item in value)


@dataclass(frozen=True, slots=True)
class ManifestDelivery(Message):
    """Hub → device on ``d/{id}/down/manifest``: a signed feature manifest."""

    TYPE: ClassVar[str] = "manifest_delivery"
    signed: bytes = _key(2, _bytes(1, MAX_SIGNED_DOCUMENT))
    # Key rotations the device must apply first, oldest first (absent: none).
    rotations: tuple[bytes, ...] | None = _key(3, _signed_list, optional=True)


@dataclass(frozen=True, slots=True)
class ManifestAck(Message):
    """Device → hub on ``d/{id}/up/manifest_ack``: what the device did with it."""

    TYPE: ClassVar[str] = "manifest_ack"
    seq: int = _key(2, _uint)
    status: str = _key(3, _one_of("accepted", "rejected", "unchanged"))
    reason: str | None = _key(4, _text(MAX_TEXT), optional=True)


@dataclass(frozen=True, slots=True)
class RotationDelivery(Message):
    """Hub → device on ``d/{id}/down/rotation``: a signed key-rotation document."""

    TYPE: ClassVar[str] = "rotation_delivery"
    signed: bytes = _key(2, _bytes(1, MAX_SIGNED_DOCUMENT))


@dataclass(frozen=True, slots=True)
class SeatRequest(Message):
    """Device → hub on ``d/{id}/up/seat``: take, keep or give back a floating seat."""

    TYPE: ClassVar[str] = "seat_request"
    op: str = _key(2, _one_of("checkout", "heartbeat", "release"))
    product: str = _key(3, _text(64))


@dataclass(frozen=True, slots=True)
class SeatReply(Message):
    """Hub → device on ``d/{id}/down/seat``: the outcome of a seat request."""

    TYPE: ClassVar[str] = "seat_reply"
    op: str = _key(2, _one_of("checkout", "heartbeat", "release"))
    product: str = _key(3, _text(64))
    granted: bool = _key(4, _bool)
    reason: str = _key(5, _text(64))


_CORE_MESSAGES: tuple[type[Message], ...] = (
    ClaimRequest,
    ClaimAccepted,
    ErrorReply,
    Hello,
    State,
    Status,
    ManifestDelivery,
    ManifestAck,
    RotationDelivery,
    SeatRequest,
    SeatReply,
)
ALL_MESSAGES: tuple[type[Message], ...] = (
    *_CORE_MESSAGES,
    *usage_messages.MESSAGES,
    *firmware_messages.MESSAGES,
)
MESSAGE_TYPES: Mapping[str, type[Message]] = {cls.TYPE: cls for cls in ALL_MESSAGES}


@dataclass(frozen=True, slots=True)
class _Field:
    """One field's wire layout, computed once per message type."""

    name: str
    key: int
    check: Callable[[Any], Any]
    optional: bool


def _layout(cls: type[Message]) -> tuple[_Field, ...]:
    return tuple(
        _Field(f.name, f.metadata["key"], f.metadata["check"], f.metadata["optional"])
        for f in dataclasses.fields(cls)
    )


# dataclasses.fields() costs more than decoding a small message: read it once.
_LAYOUTS: Mapping[type[Message], tuple[_Field, ...]] = {cls: _layout(cls) for cls in ALL_MESSAGES}

M = TypeVar("M", bound=Message)


def encode_message(message: Message) -> bytes:
    """Encode ``message`` as deterministic CBOR with its version and type."""
    body: dict[int, Any] = {KEY_VERSION: PROTOCOL_VERSION, KEY_TYPE: message.TYPE}
    layout = _LAYOUTS.get(type(message)) or _layout(type(message))
    for f in layout:
        value = getattr(message, f.name)
        if value is None:
            continue
        if f.name == "anchors":
            value = [anchor.to_wire() for anchor in value]
        elif isinstance(value, tuple):
            value = list(value)
        body[f.key] = value
    return cbor.encode(body)


def decode_as(cls: type[M], payload: bytes, *, max_size: int = cbor.DEFAULT_MAX_SIZE) -> M:
    """Decode ``payload`` and require it to be a ``cls`` message.

    Raises:
        ProtocolError: as :func:`decode_message`, or a message of another type.
    """
    message = decode_message(payload, max_size=max_size)
    if not isinstance(message, cls):
        raise MessageError(f"expected a {cls.TYPE!r} message, got {message.TYPE!r}")
    return message


def decode_message(payload: bytes, *, max_size: int = cbor.DEFAULT_MAX_SIZE) -> Message:
    """Decode and validate one message from untrusted bytes.

    Args:
        payload: the raw MQTT payload.
        max_size: size cap checked before decoding.

    Raises:
        DecodeError: the bytes are not strict CBOR (or exceed ``max_size``).
        UnsupportedVersion: the major version is not ours.
        MessageError: any other shape or value problem.
    """
    document = cbor.decode(payload, max_size=max_size)
    if not isinstance(document, dict):
        raise MessageError("message must be a CBOR map")
    version = document.get(KEY_VERSION)
    if isinstance(version, bool) or not isinstance(version, int):
        raise MessageError("missing or invalid version (key 0)")
    if version != PROTOCOL_VERSION:
        raise UnsupportedVersion(f"unsupported protocol version {version}")
    cls = MESSAGE_TYPES.get(document.get(KEY_TYPE))  # type: ignore[arg-type]
    if cls is None:
        raise MessageError(f"unknown message type {document.get(KEY_TYPE)!r}")
    return _build(cls, document)


def _build(cls: type[Message], document: dict[Any, Any]) -> Message:
    values: dict[str, Any] = {}
    for f in _LAYOUTS[cls]:
        number = f.key
        if number not in document:
            if f.optional:
                continue
            raise MessageError(f"{cls.TYPE}: missing field {f.name} (key {number})")
        try:
            values[f.name] = f.check(document[number])
        except MessageError as exc:
            raise MessageError(f"{cls.TYPE}.{f.name} (key {number}): {exc}") from None
    return cls(**values)


__all__ = [
    "PROTOCOL_VERSION",
    "ClaimAccepted",
    "ClaimRequest",
    "ErrorReply",
    "Hello",
    "ManifestAck",
    "ManifestDelivery",
    "Message",
    "RotationDelivery",
    "SeatReply",
    "SeatRequest",
    "State",
    "Status",
    "TrustAnchor",
    "decode_as",
    "decode_message",
    "encode_message",
    "signing_input_for_claim",
]
