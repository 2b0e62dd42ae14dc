"""The device's identity on disk: its key, its hub-issued credentials, its anchors.

Files in ``state_dir`` (each written atomically, mode 0600):

- ``device.key``: the raw 32-byte Ed25519 seed of the device key (token claims
  generate it once, before the first claim attempt, and reuse it on retries);
- ``identity.cbor``: what the hub issued at claim time;
- ``boot.cbor``: the boot epoch, incremented at every agent start.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from device_agent.errors import StateError
from device_agent.storage import atomic_write, read_optional
from protocols import cbor
from protocols.errors import ProtocolError
from protocols.messages import ClaimAccepted, TrustAnchor

_SEED_LENGTH = 32


@dataclass(frozen=True, slots=True)
class Identity:
    """What the hub issued to this device when it claimed it."""

    device_id: str
    mqtt_username: str
    mqtt_password: str
    anchors: tuple[TrustAnchor, ...]

    @classmethod
    def from_claim(cls, accepted: ClaimAccepted) -> Identity:
        """Build from the hub's claim answer."""
        return cls(
            device_id=accepted.device_id,
            mqtt_username=accepted.mqtt_username,
            mqtt_password=accepted.mqtt_password,
            anchors=accepted.anchors,
        )


class IdentityStore:
    """Reads and writes the identity files in one state directory."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir

    def load_or_create_device_key(self) -> Ed25519PrivateKey:
        """The device's own key, generated and persisted on first use."""
        path = self.state_dir / "device.key"
        seed = read_optional(path)
        if seed is None:
            key = Ed25519PrivateKey.generate()
            atomic_write(path, _seed_of(key))
            return key
        if len(seed) != _SEED_LENGTH:
            raise StateError(f"{path}: corrupt device key")
        return Ed25519PrivateKey.from_private_bytes(seed)

    def load(self) -> Identity | None:
        """The stored identity, or ``None`` before the device has claimed."""
        raw = read_optional(self.state_dir / "identity.cbor")
        if raw is None:
            return None
        try:
            doc = cbor.decode(raw)
            return Identity(
                device_id=doc["device_id"],
                mqtt_username=doc["mqtt_username"],
                mqtt_password=doc["mqtt_password"],
                anchors=tuple(TrustAnchor.from_wire(item) for item in doc["anchors"]),
            )
        except (ProtocolError, KeyError, TypeError) as exc:
            raise StateError(f"corrupt identity file: {exc}") from exc

    def save(self, identity: Identity) -> None:
        """Persist ``identity`` atomically."""
        doc: dict[str, Any] = {
            "device_id": identity.device_id,
            "mqtt_username": identity.mqtt_username,
            "mqtt_password": identity.mqtt_password,
            "anchors": [anchor.to_wire() for anchor in identity.anchors],
        }
        atomic_write(self.state_dir / "identity.cbor", cbor.encode(doc))

    def forget(self) -> None:
        """Drop the identity (after the hub revoked it) so the device claims again."""
        (self.state_dir / "identity.cbor").unlink(missing_ok=True)

    def next_boot_epoch(self) -> int:
        """Increment and persist the boot epoch; returns the new value."""
        path = self.state_dir / "boot.cbor"
        raw = read_optional(path)
        try:
            current = 0 if raw is None else int(cbor.decode(raw))
        except (ProtocolError, TypeError, ValueError) as exc:
            raise StateError(f"corrupt boot epoch file: {exc}") from exc
        atomic_write(path, cbor.encode(current + 1))
        return current + 1


def load_pem_device_key(path: Path) -> Ed25519PrivateKey:
    """Load a pre-registered Ed25519 device key from a PEM file.

    Raises:
        StateError: when the file is missing or not an Ed25519 private key.
    """
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise StateError(f"cannot load device key {path}: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise StateError(f"{path}: not an Ed25519 key")
    return key


def public_key_bytes(key: Ed25519PrivateKey) -> bytes:
    """The raw 32-byte public key of ``key``."""
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _seed_of(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
