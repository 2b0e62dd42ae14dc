"""COSE_Sign1 (RFC 9052) signing and verification for hub-signed documents.

The profile is specified in ``docs/signing.md``. In short: a tagged
``18([protected, unprotected, payload, signature])`` with ``alg`` (EdDSA/Ed25519
or ES256) in the protected header and ``kid`` in the unprotected header. The
algorithm is checked against the allowed set before any key is consulted, and
verification either returns the parsed message or raises; it never returns a
bool.

Private keys never enter this module: :func:`sign1` takes a callable that
turns the to-be-signed bytes into a raw signature.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.exceptions import UnsupportedAlgorithm as CryptoUnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_public_key,
)

from protocols import cbor
from protocols.errors import (
    CoseError,
    PayloadTooLarge,
    SignatureInvalid,
    UnknownKey,
    UnsupportedAlgorithm,
)

ALG_EDDSA = -8
ALG_ES256 = -7
COSE_SIGN1_TAG = 18
HDR_ALG = 1
HDR_CRIT = 2
HDR_KID = 4

SUPPORTED_ALGS = frozenset({ALG_EDDSA, ALG_ES256})
_ALG_NAMES = {ALG_EDDSA: "EdDSA", ALG_ES256: "ES256"}
_SIGNATURE_LENGTH = 64  # Ed25519, and ES256 as raw r || s (2 x 32 bytes)
_P256_COORDINATE_LENGTH = 32
_ED25519_KEY_LENGTH = 32

PublicKey = Ed25519PublicKey | ec.EllipticCurvePublicKey
Signer = Callable[[bytes], bytes]


class Profile(Enum):
    """Which COSE_Sign1 messages are accepted.

    ``STRICT`` is the hub's own profile: tag 18 required, ``alg`` only in the
    protected header. ``RFC9052`` is generic interop: an untagged message is
    accepted (the caller already knows it expects a Sign1) and ``alg`` may sit
    in the unprotected header when the protected one lacks it.
    """

    STRICT = "strict"
    RFC9052 = "rfc9052"


@dataclass(frozen=True)
class CoseKey:
    """A trusted verification key, bound to one key id and one algorithm.

    Attributes:
        kid: The key id matched against the message's ``kid`` header.
        alg: ``ALG_EDDSA`` (Ed25519) or ``ALG_ES256`` (P-256).
        key: The public key; its type must agree with ``alg``.
    """

    kid: bytes
    alg: int
    key: PublicKey

    def __post_init__(self) -> None:
        if not isinstance(self.kid, bytes):
            raise CoseError("a key id must be bytes")
        if not _key_matches_alg(self.key, self.alg):
            raise UnsupportedAlgorithm(
                f"alg {self.alg} with a {type(self.key).__name__} is not supported"
            )

    @classmethod
    def ed25519(cls, kid: bytes, raw32: bytes) -> CoseKey:
        """Build an EdDSA key from a raw 32-byte Ed25519 public key.

        Raises:
            UnsupportedAlgorithm: the key is not 32 bytes (Ed448 keys are 57).
            CoseError: the bytes are not a valid Ed25519 public key.
        """
        if not isinstance(raw32, bytes) or len(raw32) != _ED25519_KEY_LENGTH:
            raise UnsupportedAlgorithm("EdDSA keys must be 32-byte Ed25519 keys")
        try:
            key = _ed25519_public_key(bytes(raw32))
        except ValueError as exc:
            raise CoseError(f"invalid Ed25519 public key: {exc}") from exc
        return cls(kid=kid, alg=ALG_EDDSA, key=key)

    @classmethod
    def es256_from_xy(cls, kid: bytes, x: bytes, y: bytes) -> CoseKey:
        """Build an ES256 key from the 32-byte big-endian P-256 coordinates.

        Raises:
            UnsupportedAlgorithm: the coordinates are not 32 bytes (another curve).
            CoseError: the point is not on P-256.
        """
        if len(x) != _P256_COORDINATE_LENGTH or len(y) != _P256_COORDINATE_LENGTH:
            raise UnsupportedAlgorithm("ES256 keys must be P-256 (32-byte coordinates)")
        numbers = ec.EllipticCurvePublicNumbers(
            int.from_bytes(x, "big"), int.from_bytes(y, "big"), ec.SECP256R1()
        )
        try:
            key = numbers.public_key()
        except ValueError as exc:
            raise CoseError(f"invalid P-256 public key: {exc}") from exc
        return cls(kid=kid, alg=ALG_ES256, key=key)

    @classmethod
    def from_pem(cls, kid: bytes, pem: bytes) -> CoseKey:
        """Load a PEM SubjectPublicKeyInfo key; the algorithm follows its type.

        Raises:
            UnsupportedAlgorithm: the key is neither Ed25519 nor P-256.
            CoseError: the PEM cannot be parsed.
        """
        try:
            key = load_pem_public_key(pem)
        except CryptoUnsupportedAlgorithm as exc:
            raise UnsupportedAlgorithm(f"unsupported public key type: {exc}") from exc
        except (ValueError, TypeError) as exc:
            raise CoseError(f"invalid PEM public key: {exc}") from exc
        if isinstance(key, Ed25519PublicKey):
            return cls(kid=kid, alg=ALG_EDDSA, key=key)
        if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
            return cls(kid=kid, alg=ALG_ES256, key=key)
        raise UnsupportedAlgorithm(f"only Ed25519 and P-256 keys are accepted, not {key!r}")

    def raw_public_bytes(self) -> bytes:
        """Return the raw 32-byte public key of an Ed25519 key.

        Raises:
            UnsupportedAlgorithm: the key is not an Ed25519 key.
        """
        if not isinstance(self.key, Ed25519PublicKey):
            raise UnsupportedAlgorithm("raw public bytes are defined for Ed25519 keys only")
        return self.key.public_bytes(Encoding.Raw, PublicFormat.Raw)


@functools.lru_cache(maxsize=64)
def _ed25519_public_key(raw32: bytes) -> Ed25519PublicKey:
    """The key object for raw public bytes; immutable, so built once per key.

    Devices rebuild their anchors' keys for every verification; parsing the
    point costs about as much as a tenth of the verification itself.
    """
    return Ed25519PublicKey.from_public_bytes(raw32)


def _key_matches_alg(key: Any, alg: int) -> bool:
    if alg == ALG_EDDSA:
        return isinstance(key, Ed25519PublicKey)
    if alg == ALG_ES256:
        return isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1)
    return False


@dataclass(frozen=True)
class Sign1:
    """A structurally valid COSE_Sign1 message (verified only if returned by verify).

    Attributes:
        protected: The decoded protected header map.
        unprotected: The unprotected header map.
        payload: The payload, or ``None`` when detached.
        signature: The raw signature bytes.
        alg: The algorithm the message declares.
        kid: The key id, or ``None`` when absent.
        protected_bytes: The protected header exactly as received (it is signed).
    """

    protected: dict[int | str, Any]
    unprotected: dict[int | str, Any]
    payload: bytes | None
    signature: bytes
    alg: int
    kid: bytes | None
    protected_bytes: bytes


def sig_structure(protected: bytes, payload: bytes, external_aad: bytes = b"") -> bytes:
    """Build the to-be-signed bytes (RFC 9052 section 4.4).

    Args:
        protected: The protected header bstr contents, as sent.
        payload: The payload (attached or detached).
        external_aad: Application data bound into the signature but not sent.

    Returns:
        The deterministic encoding of
        ``["Signature1", protected, external_aad, payload]``.
    """
    if type(protected) is bytes and type(payload) is bytes and type(external_aad) is bytes:
        # The fixed layout, as cbor.encode would write it.
        return b"".join(
            (
                _SIG_STRUCTURE_HEAD,
                cbor.encode_bstr(protected),
                cbor.encode_bstr(external_aad),
                cbor.encode_bstr(payload),
            )
        )
    return cbor.encode(["Signature1", protected, external_aad, payload])


# 4-item array head and the context string "Signature1".
_SIG_STRUCTURE_HEAD = b"\x84" + cbor.encode("Signature1")
# Tag 18 and the 4-item array head of a COSE_Sign1; {4: kid} opens with a 1-pair map.
_SIGN1_HEAD = cbor.encode(cbor.Tag(COSE_SIGN1_TAG, []))[:1] + b"\x84"
_KID_MAP_HEAD = b"\xa1" + cbor.encode(HDR_KID)
_PROTECTED = {alg: cbor.encode({HDR_ALG: alg}) for alg in SUPPORTED_ALGS}
_PROTECTED_ALG = {encoded: alg for alg, encoded in _PROTECTED.items()}


def sign1(
    payload: bytes,
    *,
    kid: bytes,
    sign: Signer,
    alg: int = ALG_EDDSA,
    external_aad: bytes = b"",
    detached: bool = False,
) -> bytes:
    """Build a tagged COSE_Sign1 message in the hub's STRICT profile.

    Args:
        payload: The content to sign.
        kid: The signing key's id, put in the unprotected header.
        sign: Turns the to-be-signed bytes into a raw 64-byte signature
            (Ed25519, or ES256 as r || s).
        alg: ``ALG_EDDSA`` or ``ALG_ES256``, put in the protected header.
        external_aad: Application data bound into the signature but not sent.
        detached: Send ``nil`` in place of the payload.

    Returns:
        The encoded ``18([protected, {4: kid}, payload / nil, signature])``,
        byte for byte what ``cbor.encode`` gives for that structure.

    Raises:
        UnsupportedAlgorithm: ``alg`` is not supported.
        CoseError: an argument has the wrong type or the signer misbehaved.
    """
    if alg not in SUPPORTED_ALGS:
        raise UnsupportedAlgorithm(f"cannot sign with alg {alg}")
    if not all(isinstance(part, bytes) for part in (payload, kid, external_aad)):
        raise CoseError("payload, kid and external_aad must be bytes")
    payload, kid, external_aad = bytes(payload), bytes(kid), bytes(external_aad)
    protected = _PROTECTED[alg]
    signature = sign(sig_structure(protected, payload, external_aad))
    if not isinstance(signature, bytes) or len(signature) != _SIGNATURE_LENGTH:
        raise CoseError(f"the signer must return a raw {_SIGNATURE_LENGTH}-byte signature")
    return b"".join(
        (
            _SIGN1_HEAD,
            cbor.encode_bstr(protected),
            _KID_MAP_HEAD,
            cbor.encode_bstr(kid),
            b"\xf6" if detached else cbor.encode_bstr(payload),
            cbor.encode_bstr(bytes(signature)),
        )
    )


class Sign1Signer:
    """Signs many payloads with one key: :func:`sign1` with the layout precomputed.

    ``Sign1Signer(kid=k, sign=s, alg=a).sign(p)`` returns exactly
    ``sign1(p, kid=k, sign=s, alg=a)`` (attached payload, no external AAD).

    Raises:
        UnsupportedAlgorithm: ``alg`` is not supported.
        CoseError: ``kid`` is not bytes.
    """

    def __init__(self, *, kid: bytes, sign: Signer, alg: int = ALG_EDDSA) -> None:
        if alg not in SUPPORTED_ALGS:
            raise UnsupportedAlgorithm(f"cannot sign with alg {alg}")
        if not isinstance(kid, bytes):
            raise CoseError("kid must be bytes")
        protected = cbor.encode_bstr(_PROTECTED[alg])
        self._sign = sign
        self._to_be_signed = _SIG_STRUCTURE_HEAD + protected + cbor.encode_bstr(b"")
        self._head = _SIGN1_HEAD + protected + _KID_MAP_HEAD + cbor.encode_bstr(bytes(kid))

    def sign(self, payload: bytes) -> bytes:
        """The tagged COSE_Sign1 of ``payload``.

        Raises:
            CoseError: ``payload`` is not bytes, or the signer misbehaved.
        """
        if not isinstance(payload, bytes):
            raise CoseError("payload, kid and external_aad must be bytes")
        body = cbor.encode_bstr(bytes(payload))
        signature = self._sign(self._to_be_signed + body)
        if not isinstance(signature, bytes) or len(signature) != _SIGNATURE_LENGTH:
            raise CoseError(f"the signer must return a raw {_SIGNATURE_LENGTH}-byte signature")
        return b"".join((self._head, body, cbor.encode_bstr(bytes(signature))))


def decode_sign1(
    data: bytes,
    *,
    profile: Profile = Profile.STRICT,
    max_size: int = cbor.DEFAULT_MAX_SIZE,
) -> Sign1:
    """Parse a COSE_Sign1 message without verifying it, for inspection.

    Args:
        data: The encoded message.
        profile: Which layouts are acceptable (see :class:`Profile`).
        max_size: Size cap, checked before decoding.

    Returns:
        The parsed, unverified message.

    Raises:
        PayloadTooLarge: ``data`` exceeds ``max_size``.
        DecodeError: ``data`` is not strict CBOR.
        UnsupportedAlgorithm: ``alg`` is absent, not an int, or misplaced.
        CoseError: wrong or missing tag, or a malformed structure.
    """
    protected_bytes, unprotected, payload, signature = _four_items(data, profile, max_size)
    protected = _protected_header(protected_bytes)
    if type(unprotected) is not dict:
        raise CoseError("the unprotected header must be a map")
    if payload is not None and type(payload) is not bytes:
        raise CoseError("the payload must be a bstr or nil")
    if type(signature) is not bytes:
        raise CoseError("the signature must be a bstr")
    _check_headers(protected, unprotected)
    return Sign1(
        protected=protected,
        unprotected=unprotected,
        payload=payload,
        signature=signature,
        alg=_algorithm(protected, unprotected, profile),
        kid=_kid(protected, unprotected),
        protected_bytes=protected_bytes,
    )


def _four_items(data: bytes, profile: Profile, max_size: int) -> list[Any]:
    if isinstance(data, bytes) and len(data) > max_size:
        raise PayloadTooLarge(f"message of {len(data)} bytes exceeds the {max_size}-byte cap")
    _check_tag(cbor.leading_tag(data), profile)
    value = cbor.decode(data, max_size=max_size, allowed_tags=frozenset({COSE_SIGN1_TAG}))
    if isinstance(value, cbor.Tag):
        value = value.value
    if type(value) is not list or len(value) != 4:
        raise CoseError("a COSE_Sign1 is an array of four items")
    if _contains_tag(value):
        raise CoseError("no CBOR tag other than the outer tag 18 is allowed")
    return value


def _contains_tag(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, cbor.Tag):
            return True
        if isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
    return False


def _check_tag(tag: int | None, profile: Profile) -> None:
    # Its own step: sign-fail-01 carries tag 998 over a signature that verifies.
    if tag is None:
        if profile is Profile.STRICT:
            raise CoseError("the STRICT profile requires the COSE_Sign1 tag 18")
        return
    if tag != COSE_SIGN1_TAG:
        raise CoseError(f"wrong CBOR tag {tag}: a COSE_Sign1 is tag {COSE_SIGN1_TAG}")


def _protected_header(protected_bytes: Any) -> dict[int | str, Any]:
    if type(protected_bytes) is not bytes:
        raise CoseError("the protected header must be a bstr")
    if not protected_bytes:
        return {}
    alg = _PROTECTED_ALG.get(protected_bytes)
    if alg is not None:
        return {HDR_ALG: alg}  # what cbor.decode gives for the hub's own headers
    header = cbor.decode(protected_bytes)
    if type(header) is not dict:
        raise CoseError("the protected header bstr must hold a map")
    return header


def _check_headers(protected: dict[int | str, Any], unprotected: dict[int | str, Any]) -> None:
    shared = protected.keys() & unprotected.keys()
    if shared:
        raise CoseError(f"header labels {sorted(map(str, shared))} appear in both buckets")
    if HDR_CRIT in protected or HDR_CRIT in unprotected:
        # We understand no header that could be marked critical.
        raise CoseError("critical headers (crit) are not supported")


def _algorithm(
    protected: dict[int | str, Any], unprotected: dict[int | str, Any], profile: Profile
) -> int:
    if profile is Profile.STRICT and HDR_ALG in unprotected:
        raise UnsupportedAlgorithm("the STRICT profile requires alg in the protected header")
    alg = protected.get(HDR_ALG)
    if alg is None and profile is Profile.RFC9052:
        alg = unprotected.get(HDR_ALG)
    if alg is None:
        raise UnsupportedAlgorithm("the message declares no alg")
    if type(alg) is not int:
        raise UnsupportedAlgorithm(f"unknown alg {alg!r}")
    return alg


def _kid(protected: dict[int | str, Any], unprotected: dict[int | str, Any]) -> bytes | None:
    kid = protected.get(HDR_KID, unprotected.get(HDR_KID))
    if kid is not None and type(kid) is not bytes:
        raise CoseError("kid must be a bstr")
    return kid


def verify_sign1(
    data: bytes,
    keys: Iterable[CoseKey],
    *,
    profile: Profile = Profile.STRICT,
    allowed_algs: frozenset[int] = SUPPORTED_ALGS,
    detached_payload: bytes | None = None,
    external_aad: bytes = b"",
    max_size: int = cbor.DEFAULT_MAX_SIZE,
) -> Sign1:
    """Verify a COSE_Sign1 message and return it; never returns on failure.

    Args:
        data: The encoded message.
        keys: The trusted keys; one is chosen by ``kid`` and ``alg``.
        profile: Which messages are acceptable (see :class:`Profile`).
        allowed_algs: Algorithms accepted, checked before any key or crypto.
        detached_payload: The payload, when the message carries ``nil``.
        external_aad: Application data bound into the signature.
        max_size: Size cap, checked before decoding.

    Returns:
        The verified message.

    Raises:
        PayloadTooLarge: ``data`` exceeds ``max_size``.
        DecodeError: ``data`` is not strict CBOR.
        UnsupportedAlgorithm: ``alg`` is absent, misplaced or not allowed.
        UnknownKey: no trusted key has the message's ``kid`` and ``alg``.
        SignatureInvalid: the signature does not verify.
        CoseError: any other violation of the profile.
    """
    message = decode_sign1(data, profile=profile, max_size=max_size)
    if message.alg not in allowed_algs or message.alg not in SUPPORTED_ALGS:
        raise UnsupportedAlgorithm(f"alg {message.alg} is not allowed")
    payload = _payload(message, detached_payload)
    candidates = _select_keys(keys, message.kid, message.alg)
    # RFC 9052 section 4.4: with no protected attributes the Sig_structure
    # carries a zero-length bstr, even if h'a0' was sent (sign-pass-01).
    protected = message.protected_bytes if message.protected else b""
    to_be_signed = sig_structure(protected, payload, external_aad)
    if not any(_verify(key, message.signature, to_be_signed) for key in candidates):
        raise SignatureInvalid("the COSE_Sign1 signature does not verify")
    return message


def _payload(message: Sign1, detached_payload: bytes | None) -> bytes:
    if message.payload is None:
        if not isinstance(detached_payload, bytes):
            raise CoseError("the payload is detached but none was supplied")
        return detached_payload
    if detached_payload is not None:
        raise CoseError("a detached payload was supplied for a message that carries one")
    return message.payload


def _select_keys(keys: Iterable[CoseKey], kid: bytes | None, alg: int) -> list[CoseKey]:
    # A key is only ever used with its own algorithm.
    usable = [key for key in keys if key.alg == alg]
    if kid is not None:
        chosen = [key for key in usable if key.kid == kid]
    else:
        chosen = usable if len(usable) == 1 else []
    if not chosen:
        shown = kid.hex() if kid is not None else "(none)"
        raise UnknownKey(f"no trusted {_ALG_NAMES[alg]} key for kid {shown}")
    return chosen


def _verify(key: CoseKey, signature: bytes, to_be_signed: bytes) -> bool:
    if len(signature) != _SIGNATURE_LENGTH:
        return False
    try:
        if isinstance(key.key, Ed25519PublicKey):
            key.key.verify(signature, to_be_signed)
        else:
            half = _SIGNATURE_LENGTH // 2
            der = encode_dss_signature(
                int.from_bytes(signature[:half], "big"), int.from_bytes(signature[half:], "big")
            )
            key.key.verify(der, to_be_signed, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        return False
    return True
