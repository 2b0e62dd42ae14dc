"""Signing keys of the hub's two roles, behind one :class:`Signer` protocol.

The hub signs feature manifests and device directives with its online
*manifest* key; firmware manifests are signed with the *firmware catalogue*
key, which may live offline (as in Uptane). A file-backed Ed25519 signer is the
default; an HSM or KMS signer only has to satisfy :class:`Signer`.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Protocol

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocols.cose import ALG_EDDSA
from protocols.messages import TrustAnchor
from provisioning.errors import KeyFileError

ROLE_MANIFEST = "manifest"
ROLE_FIRMWARE = "firmware"
KID_LENGTH = 8


class Signer(Protocol):
    """Anything that can sign bytes for one COSE key id."""

    @property
    def kid(self) -> bytes:
        """The COSE key id carried in the unprotected header."""
        ...

    @property
    def alg(self) -> int:
        """The COSE algorithm identifier."""
        ...

    def sign(self, data: bytes) -> bytes:
        """Return the raw signature over ``data``."""
        ...

    def public_key_bytes(self) -> bytes:
        """The raw public key, as trust anchors carry it."""
        ...


def key_id_for(public_key: bytes) -> bytes:
    """A key id derived from the public key: the first 8 bytes of its SHA-256."""
    return hashlib.sha256(public_key).digest()[:KID_LENGTH]


class Ed25519Signer:
    """An Ed25519 signer over an in-memory private key."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key
        self._public = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self._kid = key_id_for(self._public)

    @property
    def kid(self) -> bytes:
        """The key id: a digest prefix of the public key."""
        return self._kid

    @property
    def alg(self) -> int:
        """EdDSA (-8)."""
        return ALG_EDDSA

    def sign(self, data: bytes) -> bytes:
        """Sign ``data`` (64-byte Ed25519 signature)."""
        return self._key.sign(data)

    def public_key_bytes(self) -> bytes:
        """The 32-byte raw public key."""
        return self._public

    def anchor(self, role: str) -> TrustAnchor:
        """The trust anchor devices keep for this key in ``role``."""
        return TrustAnchor(kid=self._kid, alg=ALG_EDDSA, key=self._public, role=role)

    @classmethod
    def generate(cls) -> Ed25519Signer:
        """A signer over a fresh random key."""
        return cls(Ed25519PrivateKey.generate())

    def write_pem(self, path: Path) -> None:
        """Write the private key to a new file ``path`` (PKCS#8 PEM, mode 0600)."""
        _write_private_pem(path, self._key)


def _write_private_pem(path: Path, key: Ed25519PrivateKey) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
        handle.flush()
        os.fsync(handle.fileno())


def load_or_create_file_signer(path: Path) -> Ed25519Signer:
    """Load the PEM Ed25519 key at ``path``, creating it (mode 0600) if absent.

    Raises:
        KeyFileError: when the file is not an unencrypted Ed25519 PKCS#8 key or
            is readable by others.
    """
    if not path.exists():
        key = Ed25519PrivateKey.generate()
        _write_private_pem(path, key)
        return Ed25519Signer(key)
    if path.stat().st_mode & 0o077:
        raise KeyFileError(f"{path} is readable by group or others; chmod 600 it")
    try:
        loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{path}: not an unencrypted PEM private key") from exc
    if not isinstance(loaded, Ed25519PrivateKey):
        raise KeyFileError(f"{path}: not an Ed25519 key")
    return Ed25519Signer(loaded)
