"""The trusted state on disk: ``state_dir/trust.cbor``, written atomically.

:class:`TrustStore` keeps the current :class:`~device_agent.trust.TrustedState`
in memory, runs every input through the pure trust core and persists the new
state (``device_agent.storage.atomic_write``) **before** returning it, so a
caller that acknowledges only after a method returned never acknowledges
something a crash could make the device forget.

The file is a CBOR map with text keys::

    {"format": 1, "device_id": tstr, "rotations": [bstr, ...],
     "manifest_seq": uint, "manifest": bstr / null, "time_anchor": uint, "lapsed": bool}

Anchors are never stored as such: ``rotations`` holds the signed rotation
documents accepted so far, and loading replays them, verifying each, from the
claim-time anchors in ``identity.cbor``. ``manifest`` is the signed manifest as
received; loading verifies it again under the anchors so derived.

A file that does not decode, names another device, holds a rotation or
manifest that no longer verifies, or whose counters contradict the signed
manifest is **refused with** :class:`~device_agent.errors.StateError`; it is
never silently replaced by a fresh state, which would forget the sequence
numbers that stop replays. Recovery is an operator decision: remove
``trust.cbor``; the device then starts from its claim-time anchors and accepts
the hub's next manifest (its ``hello`` reports sequence 0). A missing file is
a fresh state (first start after the claim).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from device_agent import trust
from device_agent.errors import StateError
from device_agent.identity import Identity, IdentityStore
from device_agent.storage import atomic_write, read_optional
from device_agent.trust import Accepted, TrustedState, TrustError
from protocols import cbor, cose
from protocols.errors import ProtocolError
from protocols.manifest import FeatureEntry
from protocols.messages import TrustAnchor

TRUST_FILE = "trust.cbor"
FORMAT_VERSION = 1
MAX_ROTATIONS = 64
_MAX_FILE_SIZE = 1024 * 1024


class TrustStore:
    """The device's trusted state, in memory and in ``state_dir/trust.cbor``."""

    def __init__(
        self, state_dir: Path, state: TrustedState, rotations: tuple[bytes, ...] = ()
    ) -> None:
        """Wrap an already loaded state; use :meth:`open` to read it from disk."""
        self.state_dir = state_dir
        self._state = state
        self._rotations = rotations

    @classmethod
    def open(cls, state_dir: Path, identity: Identity) -> TrustStore:
        """Load the trusted state of ``identity``, or start fresh if there is none.

        Raises:
            StateError: the file cannot be read, is corrupt or was tampered with.
        """
        raw = read_optional(state_dir / TRUST_FILE)
        fresh = trust.initial_state(identity.device_id, identity.anchors)
        if raw is None:
            return cls(state_dir, fresh)
        try:
            state, rotations = _load(fresh, raw)
        except (ProtocolError, TrustError, StateError, KeyError, TypeError, ValueError) as exc:
            raise StateError(f"refusing {state_dir / TRUST_FILE}: {exc}") from exc
        return cls(state_dir, state, rotations)

    @property
    def path(self) -> Path:
        """Where the state lives."""
        return self.state_dir / TRUST_FILE

    @property
    def state(self) -> TrustedState:
        """The current trusted state."""
        return self._state

    def accept_manifest(self, data: bytes, *, now: int) -> Accepted:
        """Run :func:`device_agent.trust.accept_manifest`; persist before returning.

        Raises:
            TrustError: refused; nothing changed in memory or on disk.
            StateError: accepted but not persisted; the in-memory state is kept
                as it was, so the caller must not acknowledge.
        """
        accepted = trust.accept_manifest(self._state, data, now=now)
        if accepted.state is not self._state:
            self._commit(accepted.state, self._rotations)
        return accepted

    def accept_rotation(self, data: bytes, *, now: int) -> TrustedState:
        """Run :func:`device_agent.trust.accept_rotation`; persist before returning.

        Raises:
            TrustError: refused; nothing changed.
            StateError: the new state could not be written (nothing changed).
        """
        new = trust.accept_rotation(self._state, data, now=now)
        rotations = (*self._rotations, data)
        if len(rotations) > MAX_ROTATIONS:
            raise StateError(f"more than {MAX_ROTATIONS} rotations; re-provision the device")
        self._commit(new, rotations)
        return new

    def observe_clock(self, *, now: int) -> TrustedState:
        """Record a lapsed lease (one write per lapse) and return the current state."""
        new = trust.observe_clock(self._state, now=now)
        if new is not self._state:
            self._commit(new, self._rotations)
        return self._state

    def effective_features(self, *, now: int) -> dict[str, FeatureEntry]:
        """The features usable at ``now`` (records a lapse first; ``{}`` = safe defaults)."""
        return trust.effective_features(self.observe_clock(now=now), now=now)

    def _commit(self, state: TrustedState, rotations: tuple[bytes, ...]) -> None:
        atomic_write(self.path, cbor.encode(_dump(state, rotations)))
        self._state, self._rotations = state, rotations


def _dump(state: TrustedState, rotations: tuple[bytes, ...]) -> dict[str, Any]:
    return {
        "format": FORMAT_VERSION,
        "device_id": state.device_id,
        "rotations": list(rotations),
        "manifest_seq": state.manifest_seq,
        "manifest": state.manifest_bytes,
        "time_anchor": state.time_anchor,
        "lapsed": state.lapsed,
    }


def _field(doc: dict[str, Any], name: str, kind: type) -> Any:
    value = doc[name]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise StateError(f"field {name!r} has the wrong type")
    return value


def _load(fresh: TrustedState, raw: bytes) -> tuple[TrustedState, tuple[bytes, ...]]:
    doc = cbor.decode(raw, max_size=_MAX_FILE_SIZE)
    if not isinstance(doc, dict) or doc.get("format") != FORMAT_VERSION:
        raise StateError("not a trust state file of a known format")
    if _field(doc, "device_id", str) != fresh.device_id:
        raise StateError("the file belongs to another device")
    rotations = tuple(_field(doc, "rotations", list))
    state = fresh
    for data in rotations:
        if not isinstance(data, bytes):
            raise StateError("a stored rotation is not a byte string")
        state = trust.accept_rotation(state, data, now=0)
    manifest_bytes = doc["manifest"]
    state = dataclasses.replace(
        state,
        manifest_seq=_field(doc, "manifest_seq", int),
        time_anchor=max(state.time_anchor, _field(doc, "time_anchor", int)),
        lapsed=_field(doc, "lapsed", bool),
    )
    if manifest_bytes is not None:
        state = _reload_manifest(state, _field(doc, "manifest", bytes))
    return state, rotations


def _reload_manifest(state: TrustedState, data: bytes) -> TrustedState:
    manifest = trust.verify_manifest_bytes(state, data)
    if manifest.seq != state.manifest_seq:
        raise StateError("the stored sequence contradicts the signed manifest")
    if state.time_anchor < manifest.issued_at:
        raise StateError("the stored time anchor is older than the signed manifest")
    return dataclasses.replace(state, manifest=manifest, manifest_bytes=data)


_ALG_NAMES = {"EdDSA": cose.ALG_EDDSA, "ES256": cose.ALG_ES256}


def load_anchor_state(path: Path) -> TrustedState:
    """A trusted state to verify against, for tools such as ``inspect-manifest``.

    Args:
        path: An agent state directory (its ``trust.cbor`` if present, else the
            claim-time anchors of ``identity.cbor``), one of those two files, or
            a JSON file holding a list of anchors ``{"kid": hex, "alg": -8 or
            "EdDSA", "key": hex, "role": "manifest"}`` (optionally under an
            ``"anchors"`` key). JSON anchors carry no device id, so device
            binding is not checked against them.

    Raises:
        StateError: the path holds no usable anchors.
    """
    if path.is_file() and path.name in (TRUST_FILE, "identity.cbor"):
        path = path.parent
    if path.is_dir():
        identity = IdentityStore(path).load()
        if identity is None:
            raise StateError(f"{path}: no identity.cbor (the device has not claimed)")
        return TrustStore.open(path, identity).state
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        items = doc["anchors"] if isinstance(doc, dict) else doc
        anchors = [_json_anchor(item) for item in items]
    except (OSError, ValueError, KeyError, TypeError, ProtocolError) as exc:
        raise StateError(f"{path}: not a JSON list of anchors: {exc}") from exc
    return trust.initial_state("", anchors)


def _json_anchor(item: dict[str, Any]) -> TrustAnchor:
    alg = item["alg"]
    alg = _ALG_NAMES[alg] if isinstance(alg, str) else alg
    wire = [bytes.fromhex(item["kid"]), alg, bytes.fromhex(item["key"]), item["role"]]
    return TrustAnchor.from_wire(wire)


__all__ = ["FORMAT_VERSION", "TRUST_FILE", "TrustStore", "load_anchor_state"]
