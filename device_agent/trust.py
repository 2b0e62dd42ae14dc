"""The agent's pure trust core: bytes in, a verified new state out, or a typed error.

In the manner of python-tuf's ``TrustedMetadataSet``: nothing here does IO or
reads a clock (time is the parameter ``now``), and nothing returns a bool. Every
function takes the current :class:`TrustedState` and returns a new one; a
refused input raises and leaves the caller's state as it was.

A feature manifest is checked in this order (docs/manifest.md, section 6):

1. size cap, COSE_Sign1 STRICT profile, EdDSA, signature under one of the
   anchors of role ``manifest`` whose key id was never retired;
2. payload: version, shape and ranges;
3. device binding: ``device_id`` is ours;
4. sequence: lower is a rollback; equal with the same content is a no-op
   (``unchanged``), equal with other content is equivocation, also refused;
5. expiry: ``max(now, time_anchor) >= not_after`` is expired, so a clock
   turned back never extends a license.

Errors (one tree, under :class:`~device_agent.errors.AgentError`)::

    TrustError
    ├── BadSignature   unknown or retired key, disallowed alg, signature invalid
    ├── Malformed      oversize, not strict CBOR, bad COSE, bad shape, unknown version
    ├── WrongDevice    the document is bound to another device
    ├── Rollback       older sequence, or same sequence with other content
    └── Expired        the lease has run out at the effective time

``code`` is a short stable string, sent back as the ``reason`` of a manifest ack.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal, TypeVar

from device_agent.errors import AgentError
from protocols import cose
from protocols.errors import ProtocolError, SignatureInvalid, UnknownKey, UnsupportedAlgorithm
from protocols.manifest import FeatureEntry, FeatureManifest, verify_manifest
from protocols.messages import TrustAnchor
from protocols.rotation import RotationDocument, verify_rotation

ROLE_MANIFEST = "manifest"
ROLE_FIRMWARE = "firmware"
_P256_POINT_LENGTH = 65

T = TypeVar("T")
AcceptStatus = Literal["accepted", "unchanged"]


class TrustError(AgentError):
    """A signed document was refused; the trusted state is unchanged."""

    code = "untrusted"


class BadSignature(TrustError):
    """No trusted, unretired key of the role verifies the signature."""

    code = "bad_signature"


class Malformed(TrustError):
    """The document is oversize, not strict CBOR, not a valid document or version."""

    code = "malformed"


class WrongDevice(TrustError):
    """The manifest is bound to another device."""

    code = "wrong_device"


class Rollback(TrustError):
    """An older sequence, or the held sequence with different content."""

    code = "rollback"


class Expired(TrustError):
    """The manifest's lease has run out at the effective time."""

    code = "expired"


@dataclass(frozen=True, slots=True)
class TrustedState:
    """Everything the device has accepted so far (immutable; functions return new ones).

    Attributes:
        device_id: This device's id; manifests for another device are refused.
        anchors: Trusted keys by role (``"manifest"``, ``"firmware"``).
        retired: Key ids that are never trusted again, whatever the anchors say.
        rotation_seq: The highest rotation counter accepted (0: none).
        manifest_seq: The highest manifest sequence accepted (0: none). It
            survives a dropped manifest, so older manifests stay refused.
        manifest: The held manifest, or ``None`` (safe defaults).
        manifest_bytes: The signed bytes of ``manifest``, for re-verification.
        time_anchor: The latest signed time seen (max ``issued_at``).
        lapsed: The held manifest's lease was observed to run out; it never
            counts again, even if the clock is turned back afterwards.
    """

    device_id: str
    anchors: Mapping[str, tuple[TrustAnchor, ...]]
    retired: frozenset[bytes] = frozenset()
    rotation_seq: int = 0
    manifest_seq: int = 0
    manifest: FeatureManifest | None = None
    manifest_bytes: bytes | None = field(default=None, repr=False)
    time_anchor: int = 0
    lapsed: bool = False


@dataclass(frozen=True, slots=True)
class Accepted:
    """The outcome of a successful :func:`accept_manifest`.

    Attributes:
        state: The state to keep (the same object when ``unchanged``).
        status: ``"accepted"`` (a newer manifest) or ``"unchanged"`` (the held one).
        manifest: The verified manifest.
    """

    state: TrustedState
    status: AcceptStatus
    manifest: FeatureManifest


def initial_state(device_id: str, anchors: Iterable[TrustAnchor]) -> TrustedState:
    """The state of a freshly claimed device: its claim-time anchors, nothing accepted."""
    by_role: dict[str, tuple[TrustAnchor, ...]] = {}
    for anchor in anchors:
        by_role[anchor.role] = (*by_role.get(anchor.role, ()), anchor)
    return TrustedState(device_id=device_id, anchors=by_role)


def anchor_key(anchor: TrustAnchor) -> cose.CoseKey:
    """The COSE verification key of an anchor (Ed25519 raw, or P-256 ``04||x||y``).

    Raises:
        ProtocolError: the anchor's algorithm or key bytes are not usable.
    """
    if anchor.alg == cose.ALG_ES256 and len(anchor.key) == _P256_POINT_LENGTH:
        if anchor.key[0] != 0x04:
            raise UnsupportedAlgorithm("ES256 anchors carry an uncompressed P-256 point")
        return cose.CoseKey.es256_from_xy(anchor.kid, anchor.key[1:33], anchor.key[33:])
    if anchor.alg == cose.ALG_EDDSA:
        return cose.CoseKey.ed25519(anchor.kid, anchor.key)
    raise UnsupportedAlgorithm(f"anchor alg {anchor.alg} is not supported")


def role_keys(state: TrustedState, role: str) -> list[cose.CoseKey]:
    """The usable verification keys of ``role``; retired or unusable anchors are left out."""
    keys = []
    for anchor in state.anchors.get(role, ()):
        if anchor.kid in state.retired:
            continue
        try:
            keys.append(anchor_key(anchor))
        except ProtocolError:
            continue
    return keys


def verified(check: Callable[[], T]) -> T:
    """Run a protocol verification and map its errors onto the trust tree.

    Raises:
        BadSignature: unknown key, disallowed algorithm, invalid signature.
        Malformed: any other protocol error (size, CBOR, COSE shape, content).
    """
    try:
        return check()
    except (UnknownKey, SignatureInvalid, UnsupportedAlgorithm) as exc:
        raise BadSignature(f"{exc.code}: {exc}") from exc
    except ProtocolError as exc:
        raise Malformed(f"{exc.code}: {exc}") from exc


def effective_now(state: TrustedState, now: int) -> int:
    """The time expiry is judged at: never earlier than the latest signed time seen."""
    return max(now, state.time_anchor)


def verify_manifest_bytes(state: TrustedState, data: bytes) -> FeatureManifest:
    """Steps 1 to 3: signature under the manifest anchors, content, device binding.

    Raises:
        BadSignature, Malformed, WrongDevice: see the module docstring.
    """
    keys = role_keys(state, ROLE_MANIFEST)
    manifest = verified(lambda: verify_manifest(data, keys))
    if manifest.device_id != state.device_id:
        raise WrongDevice(f"manifest is for {manifest.device_id}, not {state.device_id}")
    return manifest


def inspect_manifest(state: TrustedState, data: bytes, *, now: int) -> FeatureManifest:
    """Verify a manifest as a tool would: every check but the sequence rule.

    Signature (manifest anchors, unretired), content, device binding (skipped
    when ``state.device_id`` is empty: anchors without an identity) and expiry
    at ``max(now, time_anchor)``. The state is not consulted for sequences and
    nothing is returned but the manifest.

    Raises:
        BadSignature, Malformed, WrongDevice, Expired: as :func:`accept_manifest`.
    """
    keys = role_keys(state, ROLE_MANIFEST)
    manifest = verified(lambda: verify_manifest(data, keys))
    if state.device_id and manifest.device_id != state.device_id:
        raise WrongDevice(f"manifest is for {manifest.device_id}, not {state.device_id}")
    at = effective_now(state, now)
    if at >= manifest.not_after:
        raise Expired(f"manifest expired at {manifest.not_after} (effective time {at})")
    return manifest


def accept_manifest(state: TrustedState, data: bytes, *, now: int) -> Accepted:
    """Verify a signed manifest against ``state`` and return the state to keep.

    Args:
        state: The current trusted state.
        data: The COSE_Sign1 bytes as delivered.
        now: The local clock, Unix seconds.

    Returns:
        The new state with its status: ``accepted`` or ``unchanged``.

    Raises:
        BadSignature, Malformed, WrongDevice, Rollback, Expired: in this order
            of checks; ``state`` itself is never modified.
    """
    manifest = verify_manifest_bytes(state, data)
    if manifest.seq < state.manifest_seq:
        raise Rollback(f"manifest seq {manifest.seq} is older than {state.manifest_seq}")
    if manifest.seq == state.manifest_seq:
        if state.manifest is not None and manifest == state.manifest:
            return Accepted(state, "unchanged", state.manifest)
        raise Rollback(f"manifest seq {manifest.seq} is held with different content")
    at = effective_now(state, now)
    if at >= manifest.not_after:
        raise Expired(f"manifest expired at {manifest.not_after} (effective time {at})")
    new = dataclasses.replace(
        state,
        manifest_seq=manifest.seq,
        manifest=manifest,
        manifest_bytes=data,
        time_anchor=max(state.time_anchor, manifest.issued_at),
        lapsed=False,
    )
    return Accepted(new, "accepted", manifest)


def _rotated_anchors(state: TrustedState, doc: RotationDocument) -> TrustedState:
    old_kids = {anchor.kid for anchor in state.anchors.get(doc.role, ())}
    new_kids = {anchor.kid for anchor in doc.anchors}
    retired = state.retired | set(doc.retired) | (old_kids - new_kids)
    if new_kids & retired:
        raise Malformed("rotation re-trusts a retired key id")
    for anchor in doc.anchors:
        try:
            anchor_key(anchor)
        except ProtocolError as exc:
            raise Malformed(f"rotation anchor {anchor.kid.hex()}: {exc}") from exc
    anchors = {**state.anchors, doc.role: doc.anchors}
    return dataclasses.replace(
        state,
        anchors=anchors,
        retired=frozenset(retired),
        rotation_seq=doc.seq,
        time_anchor=max(state.time_anchor, doc.issued_at),
    )


def _recheck_manifest(state: TrustedState) -> TrustedState:
    """Drop the held manifest unless it still verifies under the current anchors."""
    if state.manifest_bytes is None:
        return state
    try:
        verify_manifest_bytes(state, state.manifest_bytes)
    except TrustError:
        return dataclasses.replace(state, manifest=None, manifest_bytes=None)
    return state


def accept_rotation(
    state: TrustedState, data: bytes, *, now: int, role: str = ROLE_MANIFEST
) -> TrustedState:
    """Verify a signed rotation document and return the state with the new anchors.

    The document must be signed by a key ``state`` trusts for ``role`` and carry
    a rotation counter above ``state.rotation_seq``. Its anchors replace the
    role's anchors; every dropped or listed key id is retired for good. A held
    manifest that no longer verifies is dropped (safe defaults), but its
    sequence number is kept so that older manifests stay refused.

    Args:
        state: The current trusted state.
        data: The COSE_Sign1 bytes as delivered.
        now: The local clock; rotation documents do not expire, it is unused.
        role: The role the caller expects to rotate.

    Raises:
        BadSignature: not signed by a trusted, unretired key of ``role``.
        Malformed: invalid document, another role, or a retired key re-trusted.
        Rollback: the rotation counter is not higher than the held one.
    """
    del now  # rotation documents carry no lease
    keys = role_keys(state, role)
    doc = verified(lambda: verify_rotation(data, keys))
    if doc.role != role:
        raise Malformed(f"rotation of role {doc.role!r}, expected {role!r}")
    if doc.seq <= state.rotation_seq:
        raise Rollback(f"rotation seq {doc.seq} is not above {state.rotation_seq}")
    return _recheck_manifest(_rotated_anchors(state, doc))


def is_lapsed(state: TrustedState, *, now: int) -> bool:
    """Whether the held manifest no longer counts (none held, lapsed or expired)."""
    manifest = state.manifest
    if manifest is None or state.lapsed:
        return True
    return effective_now(state, now) >= manifest.not_after


def observe_clock(state: TrustedState, *, now: int) -> TrustedState:
    """Record that the held manifest's lease has run out at ``now``, if it has.

    Once recorded (``lapsed``), turning the clock back never revives the
    manifest; only a newer manifest does. Returns ``state`` itself when nothing
    changes, so the caller persists only on a real change.
    """
    if state.manifest is None or state.lapsed or not is_lapsed(state, now=now):
        return state
    return dataclasses.replace(state, lapsed=True)


def effective_features(state: TrustedState, *, now: int) -> dict[str, FeatureEntry]:
    """The features the device may use at ``now``; ``{}`` (safe defaults) when none count.

    Safe defaults apply when no manifest is held (never received, or dropped by
    a rotation), when its lease has run out at ``max(now, time_anchor)``, or
    when it was recorded as lapsed.
    """
    if state.manifest is None or is_lapsed(state, now=now):
        return {}
    return dict(state.manifest.features)


__all__ = [
    "ROLE_FIRMWARE",
    "ROLE_MANIFEST",
    "AcceptStatus",
    "Accepted",
    "BadSignature",
    "Expired",
    "Malformed",
    "Rollback",
    "TrustError",
    "TrustedState",
    "WrongDevice",
    "accept_manifest",
    "accept_rotation",
    "anchor_key",
    "effective_features",
    "effective_now",
    "initial_state",
    "inspect_manifest",
    "is_lapsed",
    "observe_clock",
    "role_keys",
    "verified",
    "verify_manifest_bytes",
]
