"""Rotating the hub's manifest-signing key without bricking a single device.

``hub keys rotate-manifest`` (with the hub stopped, or followed by a restart):

1. loads the current key ``keys/manifest.pem`` and generates a new one;
2. writes a rotation document — role ``manifest``, the next rotation sequence,
   the new key as the only anchor, the old key id retired — signed by the OLD
   key, which is the key every device trusts now, to ``keys/rotations/NNNN.cose``;
3. moves the old key to ``keys/retired/`` and installs the new one.

Devices receive the documents in order (on ``hello``, and from the maintenance
job for devices still holding a manifest signed by an older key) followed by a
fresh manifest signed by the new key. After accepting a rotation a device never
trusts the retired key again, not even for the manifest it had cached.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from hub.settings import Settings
from protocols.rotation import RotationDocument, sign_rotation
from provisioning.signer import ROLE_MANIFEST, Ed25519Signer, load_or_create_file_signer


@dataclass(frozen=True, slots=True)
class RotationResult:
    """What one rotation did."""

    seq: int
    old_kid: bytes
    new_kid: bytes
    document: Path


def rotations_dir(settings: Settings) -> Path:
    """Where the signed rotation documents are kept, in order."""
    return settings.keys_dir / "rotations"


def load_rotations(settings: Settings) -> tuple[bytes, ...]:
    """Every rotation document of the manifest role, oldest first."""
    directory = rotations_dir(settings)
    if not directory.exists():
        return ()
    return tuple(path.read_bytes() for path in sorted(directory.glob("*.cose")))


def rotate_manifest_key(settings: Settings, *, now: datetime) -> RotationResult:
    """Replace the manifest key; see the module docstring for the steps."""
    current = settings.keys_dir / "manifest.pem"
    old = load_or_create_file_signer(current)
    new = Ed25519Signer.generate()
    seq = len(load_rotations(settings)) + 1
    document = RotationDocument(
        role=ROLE_MANIFEST,
        seq=seq,
        anchors=(new.anchor(ROLE_MANIFEST),),
        retired=(old.kid,),
        issued_at=int(now.timestamp()),
    )
    signed = sign_rotation(document, kid=old.kid, sign=old.sign)
    path = rotations_dir(settings) / f"{seq:04d}.cose"
    _write_new(path, signed)
    retired = settings.keys_dir / "retired" / f"manifest-{old.kid.hex()}.pem"
    retired.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.replace(current, retired)
    new.write_pem(current)
    return RotationResult(seq=seq, old_kid=old.kid, new_kid=new.kid, document=path)


def _write_new(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
