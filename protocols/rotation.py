"""Key-rotation documents: how the hub replaces a signing key without bricking devices.

A rotation document names the complete new set of trust anchors for one
signing role and the key ids retired for good. It is signed as a tagged
COSE_Sign1 (EdDSA) by a key the device *currently* trusts for that role, and
carries a rotation counter that must strictly increase. The layout is
specified in ``docs/manifest.md``::

    {0: 1, 1: "rotation", 2: role, 3: seq, 4: [anchor, ...], 5: [kid, ...], 6: issued_at}

where each anchor is the ``[kid, alg, key, role]`` array of
:class:`protocols.messages.TrustAnchor`. Like the manifest functions, verifying
returns the decoded document or raises a
:class:`~protocols.errors.ProtocolError`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from protocols import cbor, cose
from protocols.errors import CoseError, MessageError, UnknownKey, UnsupportedVersion
from protocols.messages import MAX_ANCHORS, TrustAnchor

ROTATION_TYPE = "rotation"
ROTATION_VERSION = 1
ROLES = frozenset({"manifest", "firmware"})
MAX_RETIRED = 32
MAX_ROTATION_SIZE = 8 * 1024
ROTATION_ALGS = frozenset({cose.ALG_EDDSA})
UINT64_MAX = 2**64 - 1

K_VERSION, K_TYPE, K_ROLE, K_SEQ, K_ANCHORS, K_RETIRED, K_ISSUED = range(7)


@dataclass(frozen=True, slots=True)
class RotationDocument:
    """The new anchors of one role and the key ids retired from it.

    Attributes:
        role: The signing role rotated (``"manifest"`` or ``"firmware"``).
        seq: The rotation counter (≥ 1); a device accepts only a higher one.
        anchors: The complete new anchor set of ``role`` (1..8 anchors, each
            with that role).
        retired: Key ids never to be trusted again (0..32, disjoint from
            ``anchors``).
        issued_at: Hub time, Unix seconds; a signed time anchor.
    """

    role: str
    seq: int
    anchors: tuple[TrustAnchor, ...]
    retired: tuple[bytes, ...]
    issued_at: int


def _uint(value: Any, what: str, *, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise MessageError(f"rotation.{what}: expected an unsigned integer")
    if not minimum <= value <= UINT64_MAX:
        raise MessageError(f"rotation.{what}: must be in {minimum}..2^64-1")
    return value


def _kid(value: Any) -> bytes:
    if not isinstance(value, bytes) or not 1 <= len(value) <= 32:
        raise MessageError("rotation: a key id is a bstr of 1..32 bytes")
    return value


def check_rotation(doc: RotationDocument) -> RotationDocument:
    """Validate ``doc`` against the wire rules.

    Returns:
        ``doc`` unchanged.

    Raises:
        MessageError: a field is out of range or the anchors are inconsistent.
    """
    if doc.role not in ROLES:
        raise MessageError(f"rotation: unknown role {doc.role!r}")
    _uint(doc.seq, "seq", minimum=1)
    _uint(doc.issued_at, "issued_at")
    if not 1 <= len(doc.anchors) <= MAX_ANCHORS:
        raise MessageError(f"rotation: 1..{MAX_ANCHORS} anchors required")
    if len(doc.retired) > MAX_RETIRED:
        raise MessageError(f"rotation: at most {MAX_RETIRED} retired key ids")
    kids = [anchor.kid for anchor in doc.anchors]
    if len(set(kids)) != len(kids):
        raise MessageError("rotation: two anchors share a key id")
    if any(anchor.role != doc.role for anchor in doc.anchors):
        raise MessageError("rotation: every anchor must carry the rotated role")
    for kid in doc.retired:
        _kid(kid)
    if set(kids) & set(doc.retired):
        raise MessageError("rotation: a key id cannot be both new and retired")
    return doc


def encode_rotation(doc: RotationDocument) -> bytes:
    """Encode the rotation payload as deterministic CBOR.

    Raises:
        MessageError: the document breaks a wire rule.
    """
    check_rotation(doc)
    return cbor.encode(
        {
            K_VERSION: ROTATION_VERSION,
            K_TYPE: ROTATION_TYPE,
            K_ROLE: doc.role,
            K_SEQ: doc.seq,
            K_ANCHORS: [anchor.to_wire() for anchor in doc.anchors],
            K_RETIRED: list(doc.retired),
            K_ISSUED: doc.issued_at,
        }
    )


def _required(document: dict[Any, Any], number: int, what: str) -> Any:
    if number not in document:
        raise MessageError(f"rotation: missing {what} (key {number})")
    return document[number]


def _array(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise MessageError(f"rotation: {what} must be an array")
    return value


def decode_rotation(payload: bytes, *, max_size: int = MAX_ROTATION_SIZE) -> RotationDocument:
    """Decode and validate a rotation payload from untrusted bytes.

    Raises:
        DecodeError: not strict CBOR (``PayloadTooLarge`` over ``max_size``).
        UnsupportedVersion: key 0 is not version 1.
        MessageError: any other shape or value problem.
    """
    document = cbor.decode(payload, max_size=max_size)
    if not isinstance(document, dict):
        raise MessageError("rotation document must be a CBOR map")
    version = document.get(K_VERSION)
    if isinstance(version, bool) or not isinstance(version, int):
        raise MessageError("rotation: missing or invalid version (key 0)")
    if version != ROTATION_VERSION:
        raise UnsupportedVersion(f"unsupported rotation version {version}")
    if document.get(K_TYPE) != ROTATION_TYPE:
        raise MessageError(f"expected a {ROTATION_TYPE!r} document (key 1)")
    role = _required(document, K_ROLE, "role")
    anchors = _array(_required(document, K_ANCHORS, "anchors"), "anchors")
    retired = _array(_required(document, K_RETIRED, "retired"), "retired")
    if len(anchors) > MAX_ANCHORS or len(retired) > MAX_RETIRED:
        raise MessageError("rotation: too many anchors or retired key ids")
    doc = RotationDocument(
        role=role if isinstance(role, str) else "",
        seq=_uint(_required(document, K_SEQ, "seq"), "seq", minimum=1),
        anchors=tuple(TrustAnchor.from_wire(item) for item in anchors),
        retired=tuple(_kid(kid) for kid in retired),
        issued_at=_uint(_required(document, K_ISSUED, "issued_at"), "issued_at"),
    )
    return check_rotation(doc)


def sign_rotation(doc: RotationDocument, *, kid: bytes, sign: Callable[[bytes], bytes]) -> bytes:
    """Sign ``doc`` as a tagged COSE_Sign1 with EdDSA (by a currently trusted key).

    Raises:
        MessageError: the document breaks a wire rule.
        CoseError: the signer misbehaved.
    """
    return cose.sign1(encode_rotation(doc), kid=kid, sign=sign, alg=cose.ALG_EDDSA)


def verify_rotation(
    data: bytes, keys: Iterable[cose.CoseKey], *, max_size: int = MAX_ROTATION_SIZE
) -> RotationDocument:
    """Verify a signed rotation document (STRICT, EdDSA) and return it decoded.

    Raises:
        ProtocolError: as :func:`protocols.manifest.verify_manifest`.
    """
    message = cose.verify_sign1(
        data, keys, profile=cose.Profile.STRICT, allowed_algs=ROTATION_ALGS, max_size=max_size
    )
    if message.payload is None:
        raise CoseError("a rotation document carries its payload")
    if message.kid is None:
        # The kid is unprotected, so dropping it still verifies against a single
        # anchor; requiring it means a bit flip there can never pass.
        raise UnknownKey("a signed rotation document must name its key (kid)")
    return decode_rotation(message.payload, max_size=max_size)


__all__ = [
    "MAX_RETIRED",
    "MAX_ROTATION_SIZE",
    "ROLES",
    "ROTATION_TYPE",
    "ROTATION_VERSION",
    "RotationDocument",
    "check_rotation",
    "decode_rotation",
    "encode_rotation",
    "sign_rotation",
    "verify_rotation",
]
