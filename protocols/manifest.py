"""The signed feature manifest: what a device may use, until when.

A manifest is a CBOR map signed as COSE_Sign1 (docs/signing.md) with the hub's
manifest key. This module holds its dataclasses and its wire form; the exact
layout is specified in ``docs/manifest.md``::

    {0: 1, 1: "manifest", 2: device_id, 3: seq, 4: issued_at, 5: not_after,
     6: {feature_key: {0: enabled, ? 1: limit, ? 2: cap, ? 3: period, ? 4: overage}}}

:func:`encode_manifest` validates and writes deterministic CBOR,
:func:`decode_manifest` reads untrusted bytes strictly, :func:`sign_manifest`
wraps the payload in a tagged COSE_Sign1 (EdDSA) and :func:`verify_manifest`
verifies one (STRICT profile, EdDSA only) and returns the decoded manifest, or
raises a :class:`~protocols.errors.ProtocolError`; it never returns a bool.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from protocols import cbor, cose
from protocols.errors import CoseError, MessageError, UnknownKey, UnsupportedVersion
from protocols.ids import is_valid_id

FeatureKind = Literal["flag", "limit", "metered"]
OveragePolicy = Literal["block", "allow", "flag"]
Period = Literal["day", "month"]

MANIFEST_TYPE = "manifest"
MANIFEST_VERSION = 1
MAX_FEATURES = 256
FEATURE_KEY_MAX_LENGTH = 64
# 256 features with the longest keys and every field at its widest encode to
# about 27 KiB; the cap leaves room for the COSE envelope and minor additions.
MAX_MANIFEST_SIZE = 32 * 1024
MANIFEST_ALGS = frozenset({cose.ALG_EDDSA})
UINT64_MAX = 2**64 - 1

K_VERSION, K_TYPE, K_DEVICE, K_SEQ, K_ISSUED, K_NOT_AFTER, K_FEATURES = range(7)
E_ENABLED, E_LIMIT, E_CAP, E_PERIOD, E_OVERAGE = range(5)

_FEATURE_KEY = re.compile(r"[A-Za-z0-9._-]{1,64}")
_PERIODS: frozenset[str] = frozenset(get_args(Period))
_OVERAGES: frozenset[str] = frozenset(get_args(OveragePolicy))


@dataclass(frozen=True, slots=True)
class FeatureEntry:
    """One feature as a device must enforce it.

    ``enabled`` says whether the feature may be used at all. ``limit`` is a
    numeric ceiling (for example the number of users) when the feature has one.
    Metered features carry ``cap`` units per ``period`` and what to do beyond
    it (``overage``: ``block`` stops use, ``allow`` keeps going, ``flag`` keeps
    going and reports the overuse). A ``cap`` always comes with a ``period``;
    a capped entry without ``overage`` is enforced as ``block``.
    """

    enabled: bool
    limit: int | None = None
    cap: int | None = None
    period: Period | None = None
    overage: OveragePolicy | None = None


@dataclass(frozen=True, slots=True)
class FeatureManifest:
    """The per-device manifest before signing.

    ``issued_at`` doubles as the signed time anchor: a device never believes a
    clock earlier than the latest anchor it has accepted. ``not_after`` is the
    lease: past it, the device falls back to its safe defaults (nothing enabled)
    until a fresh manifest arrives.
    """

    device_id: str
    seq: int
    issued_at: int
    not_after: int
    features: dict[str, FeatureEntry] = field(default_factory=dict)


def _uint(value: Any, what: str, *, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise MessageError(f"{what}: expected an unsigned integer")
    if not minimum <= value <= UINT64_MAX:
        raise MessageError(f"{what}: must be in {minimum}..2^64-1")
    return value


def _choice(value: Any, allowed: frozenset[str], what: str) -> Any:
    if not isinstance(value, str) or value not in allowed:
        raise MessageError(f"{what}: must be one of {sorted(allowed)}")
    return value


def _check_feature_key(key: Any) -> str:
    if not isinstance(key, str) or _FEATURE_KEY.fullmatch(key) is None:
        raise MessageError(f"invalid feature key {key!r}: 1..64 of [A-Za-z0-9._-]")
    return key


def _check_entry(key: str, entry: FeatureEntry) -> FeatureEntry:
    """Validate a typed entry (also the last step of decoding one)."""
    what = f"feature {key!r}"
    if not isinstance(entry.enabled, bool):
        raise MessageError(f"{what}.enabled: expected a boolean")
    if entry.limit is not None:
        _uint(entry.limit, f"{what}.limit")
    if entry.cap is not None:
        _uint(entry.cap, f"{what}.cap")
        if entry.period is None:
            raise MessageError(f"{what}: a cap needs a period")
    if entry.period is not None:
        _choice(entry.period, _PERIODS, f"{what}.period")
    if entry.overage is not None:
        _choice(entry.overage, _OVERAGES, f"{what}.overage")
    return entry


def check_manifest(manifest: FeatureManifest) -> FeatureManifest:
    """Validate every field of ``manifest`` against the wire rules.

    Returns:
        ``manifest`` unchanged.

    Raises:
        MessageError: a field is out of range (see docs/manifest.md).
    """
    _check_header(manifest)
    _check_features(manifest.features)
    return manifest


def _check_header(manifest: FeatureManifest) -> None:
    """Validate everything but the features."""
    if not isinstance(manifest.device_id, str) or not is_valid_id(manifest.device_id):
        raise MessageError(f"invalid device id {manifest.device_id!r}")
    _uint(manifest.seq, "seq", minimum=1)
    _uint(manifest.issued_at, "issued_at")
    _uint(manifest.not_after, "not_after")
    if manifest.not_after <= manifest.issued_at:
        raise MessageError("not_after must be later than issued_at")


def _check_features(features: Any) -> None:
    if not isinstance(features, dict) or len(features) > MAX_FEATURES:
        raise MessageError(f"features must be a map of at most {MAX_FEATURES} entries")
    for key, entry in features.items():
        _check_feature_key(key)
        if not isinstance(entry, FeatureEntry):
            raise MessageError(f"feature {key!r} is not a FeatureEntry")
        _check_entry(key, entry)


def _entry_to_wire(entry: FeatureEntry) -> dict[int, Any]:
    wire: dict[int, Any] = {E_ENABLED: entry.enabled}
    optional: dict[int, Any] = {
        E_LIMIT: entry.limit,
        E_CAP: entry.cap,
        E_PERIOD: entry.period,
        E_OVERAGE: entry.overage,
    }
    wire.update({number: value for number, value in optional.items() if value is not None})
    return wire


def manifest_to_wire(manifest: FeatureManifest) -> dict[int, Any]:
    """The CBOR map of a validated manifest (before encoding).

    Raises:
        MessageError: the manifest breaks a wire rule.
    """
    check_manifest(manifest)
    return {
        K_VERSION: MANIFEST_VERSION,
        K_TYPE: MANIFEST_TYPE,
        K_DEVICE: manifest.device_id,
        K_SEQ: manifest.seq,
        K_ISSUED: manifest.issued_at,
        K_NOT_AFTER: manifest.not_after,
        K_FEATURES: {key: _entry_to_wire(e) for key, e in manifest.features.items()},
    }


def encode_manifest(manifest: FeatureManifest) -> bytes:
    """Encode the manifest payload as deterministic CBOR.

    The result is ``cbor.encode(manifest_to_wire(manifest))``, assembled from
    the fixed layout; the feature section's encoding is cached by value (a
    fleet-wide change gives many devices equal features).

    Raises:
        MessageError: the manifest breaks a wire rule.
    """
    check_manifest(manifest)
    return _assemble(manifest, _features_cbor(tuple(manifest.features.items())))


# The map's keys 0..6 are single-byte heads in ascending (deterministic) order;
# key 0 (version) and key 1 (type) never change.
_MANIFEST_HEAD = cbor.encode({K_VERSION: MANIFEST_VERSION, K_TYPE: MANIFEST_TYPE})[
    1:
] + cbor.encode(K_DEVICE)
_MAP_OF_7 = b"\xa7"
_K_SEQ, _K_ISSUED, _K_NOT_AFTER, _K_FEATURES = (
    cbor.encode(k) for k in (K_SEQ, K_ISSUED, K_NOT_AFTER, K_FEATURES)
)


def _assemble(manifest: FeatureManifest, features_cbor: bytes) -> bytes:
    """The encoding of a *validated* manifest whose feature section encodes as given."""
    return b"".join(
        (
            _MAP_OF_7,
            _MANIFEST_HEAD,
            cbor.encode_text(manifest.device_id),
            _K_SEQ,
            cbor.encode_uint(manifest.seq),
            _K_ISSUED,
            cbor.encode_uint(manifest.issued_at),
            _K_NOT_AFTER,
            cbor.encode_uint(manifest.not_after),
            _K_FEATURES,
            features_cbor,
        )
    )


@functools.lru_cache(maxsize=1024)
def _features_cbor(items: tuple[tuple[str, FeatureEntry], ...]) -> bytes:
    """The feature section of *validated* features (as ``tuple(features.items())``).

    Cached by value: once validated, equal entries (``FeatureEntry`` equality)
    have equal field values of the same wire types (bool; int or int subclass;
    one of the allowed strings), so they encode to the same bytes.
    """
    return cbor.encode({key: _entry_to_wire(entry) for key, entry in items})


def _required(document: dict[Any, Any], number: int, what: str) -> Any:
    if number not in document:
        raise MessageError(f"manifest: missing {what} (key {number})")
    return document[number]


def _entry_from_wire(key: str, value: Any) -> FeatureEntry:
    if not isinstance(value, dict):
        raise MessageError(f"feature {key!r}: entry must be a map")
    entry = FeatureEntry(
        enabled=_required(value, E_ENABLED, f"feature {key!r}.enabled"),
        limit=value.get(E_LIMIT),
        cap=value.get(E_CAP),
        period=value.get(E_PERIOD),
        overage=value.get(E_OVERAGE),
    )
    return _check_entry(key, entry)  # every field's type and range, as for encoding


def _features_from_wire(value: Any) -> dict[str, FeatureEntry]:
    if not isinstance(value, dict):
        raise MessageError("manifest: features (key 6) must be a map")
    if len(value) > MAX_FEATURES:
        raise MessageError(f"manifest: more than {MAX_FEATURES} features")
    return {_check_feature_key(k): _entry_from_wire(k, v) for k, v in value.items()}


def _check_envelope(document: Any) -> dict[Any, Any]:
    if not isinstance(document, dict):
        raise MessageError("manifest must be a CBOR map")
    version = document.get(K_VERSION)
    if isinstance(version, bool) or not isinstance(version, int):
        raise MessageError("manifest: missing or invalid version (key 0)")
    if version != MANIFEST_VERSION:
        raise UnsupportedVersion(f"unsupported manifest version {version}")
    if document.get(K_TYPE) != MANIFEST_TYPE:
        raise MessageError(f"expected a {MANIFEST_TYPE!r} document (key 1)")
    return document


def decode_manifest(payload: bytes, *, max_size: int = MAX_MANIFEST_SIZE) -> FeatureManifest:
    """Decode and validate a manifest payload from untrusted bytes.

    Args:
        payload: The COSE_Sign1 payload (the manifest map's CBOR encoding).
        max_size: Size cap, checked before decoding.

    Returns:
        The validated manifest.

    Raises:
        DecodeError: not strict CBOR (``PayloadTooLarge`` over ``max_size``).
        UnsupportedVersion: key 0 is not version 1.
        MessageError: any other shape or value problem.
    """
    document = _check_envelope(cbor.decode(payload, max_size=max_size))
    device_id = _required(document, K_DEVICE, "device_id")
    if not isinstance(device_id, str) or not is_valid_id(device_id):
        raise MessageError(f"manifest: invalid device id {device_id!r}")
    manifest = FeatureManifest(
        device_id=device_id,
        seq=_uint(_required(document, K_SEQ, "seq"), "seq", minimum=1),
        issued_at=_uint(_required(document, K_ISSUED, "issued_at"), "issued_at"),
        not_after=_uint(_required(document, K_NOT_AFTER, "not_after"), "not_after"),
        features=_features_from_wire(_required(document, K_FEATURES, "features")),
    )
    _check_header(manifest)  # the features were checked one by one as they were read
    return manifest


def sign_manifest(
    manifest: FeatureManifest, *, kid: bytes, sign: Callable[[bytes], bytes]
) -> bytes:
    """Sign ``manifest`` as a tagged COSE_Sign1 with EdDSA.

    Args:
        manifest: The manifest to sign; validated first.
        kid: The manifest key's id (unprotected header).
        sign: Turns the to-be-signed bytes into a 64-byte Ed25519 signature.

    Returns:
        The encoded ``18([h'a10127', {4: kid}, payload, signature])``.

    Raises:
        MessageError: the manifest breaks a wire rule or is too large.
        CoseError: the signer misbehaved.
    """
    return _sign_payload(encode_manifest(manifest), kid, sign)


def sign_manifests(
    manifests: Iterable[FeatureManifest], *, kid: bytes, sign: Callable[[bytes], bytes]
) -> list[bytes]:
    """Sign many manifests; the same as :func:`sign_manifest` on each, in order.

    Manifests that share one ``features`` dict object (as a fleet-wide change
    produces) have it validated and encoded once; do not mutate it meanwhile.
    Every manifest is still validated, encoded and signed on its own.

    Raises:
        MessageError, CoseError: as :func:`sign_manifest`, for the first bad one.
    """
    signed: list[bytes] = []
    features: object = None
    section = b""
    signer = cose.Sign1Signer(kid=kid, sign=sign, alg=cose.ALG_EDDSA)
    for manifest in manifests:
        if manifest.features is features:
            _check_header(manifest)
        else:
            check_manifest(manifest)
            features = manifest.features
            section = _features_cbor(tuple(manifest.features.items()))
        signed.append(_checked_size(signer.sign(_assemble(manifest, section))))
    return signed


def _sign_payload(payload: bytes, kid: bytes, sign: Callable[[bytes], bytes]) -> bytes:
    return _checked_size(cose.sign1(payload, kid=kid, sign=sign, alg=cose.ALG_EDDSA))


def _checked_size(signed: bytes) -> bytes:
    if len(signed) > MAX_MANIFEST_SIZE:
        raise MessageError(f"signed manifest exceeds {MAX_MANIFEST_SIZE} bytes")
    return signed


def verify_manifest(
    data: bytes, keys: Iterable[cose.CoseKey], *, max_size: int = MAX_MANIFEST_SIZE
) -> FeatureManifest:
    """Verify a signed manifest and return its decoded content.

    Checks the size cap, the STRICT COSE profile with EdDSA as the only allowed
    algorithm and the signature under ``keys``, requires a ``kid`` (the hub
    always sends one), then decodes the payload. It
    says nothing about device binding, sequence or expiry: that is the device's
    trust core (``device_agent.trust``).

    Raises:
        PayloadTooLarge: ``data`` exceeds ``max_size``.
        UnsupportedAlgorithm, UnknownKey, SignatureInvalid, CoseError: see
            :func:`protocols.cose.verify_sign1`; ``UnknownKey`` also when the
            message carries no ``kid``.
        DecodeError, UnsupportedVersion, MessageError: the payload is not a
            valid manifest.
    """
    message = cose.verify_sign1(
        data, keys, profile=cose.Profile.STRICT, allowed_algs=MANIFEST_ALGS, max_size=max_size
    )
    if message.payload is None:
        raise CoseError("a signed manifest carries its payload")
    if message.kid is None:
        # The kid is unprotected, so dropping it still verifies against a single
        # anchor; requiring it means a bit flip there can never pass.
        raise UnknownKey("a signed manifest must name its key (kid)")
    return decode_manifest(message.payload, max_size=max_size)


def manifest_to_json(manifest: FeatureManifest) -> dict[str, Any]:
    """A JSON-ready view of a manifest (for tools and APIs); absent fields omitted."""
    features = {
        key: {
            name: value
            for name, value in (
                ("enabled", entry.enabled),
                ("limit", entry.limit),
                ("cap", entry.cap),
                ("period", entry.period),
                ("overage", entry.overage),
            )
            if value is not None
        }
        for key, entry in sorted(manifest.features.items())
    }
    return {
        "device_id": manifest.device_id,
        "seq": manifest.seq,
        "issued_at": manifest.issued_at,
        "not_after": manifest.not_after,
        "features": features,
    }


__all__ = [
    "MANIFEST_ALGS",
    "MANIFEST_TYPE",
    "MANIFEST_VERSION",
    "MAX_FEATURES",
    "MAX_MANIFEST_SIZE",
    "FeatureEntry",
    "FeatureKind",
    "FeatureManifest",
    "OveragePolicy",
    "Period",
    "check_manifest",
    "decode_manifest",
    "encode_manifest",
    "manifest_to_json",
    "manifest_to_wire",
    "sign_manifest",
    "sign_manifests",
    "verify_manifest",
]
