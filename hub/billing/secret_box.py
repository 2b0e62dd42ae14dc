"""Webhook secrets sealed at rest with AES-256-GCM.

A webhook secret cannot be stored as a hash: the hub needs it to sign every
request. It is stored **encrypted** under a 256-bit key kept in the hub's key
directory (``<data_dir>/keys/webhook-secrets.key``, mode 0600, created on
first use), so a database dump or backup alone does not reveal any secret.
The endpoint's tenant and id are the associated data: a sealed secret copied
onto another row does not open. The secret is shown once, in the answer to
the request that created (or rotated) it, and never logged or returned again.
Hub workers sharing a database must share this key file, like the signing keys.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from hub.errors import HubError

KEY_FILE = "webhook-secrets.key"
_VERSION = "v1"
_NONCE = 12


class SecretUnavailable(HubError):
    """A sealed webhook secret cannot be opened (wrong key file or tampered row)."""

    code = "secret_unavailable"
    http_status = 500


def new_webhook_secret() -> str:
    """A fresh endpoint secret: ``whsec_`` and 256 random bits, URL-safe."""
    return "whsec_" + secrets.token_urlsafe(32)


def _write_new_key(path: Path) -> None:
    """Create the key file atomically; a concurrent creator's file wins."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{secrets.token_hex(6)}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(base64.b64encode(AESGCM.generate_key(bit_length=256)).decode() + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        with contextlib.suppress(FileExistsError):  # never overwrite an existing key
            os.link(temp, path)
    finally:
        temp.unlink(missing_ok=True)


class SecretBox:
    """Seal and open webhook secrets with the key in ``keys_dir``."""

    def __init__(self, keys_dir: Path) -> None:
        """Load the key (creating it on first use)."""
        path = keys_dir / KEY_FILE
        if not path.exists():
            _write_new_key(path)
        try:
            key = base64.b64decode(path.read_text(encoding="ascii").strip(), validate=True)
        except (ValueError, binascii.Error):
            raise SecretUnavailable(f"{path} is not a base64 key") from None
        if len(key) != 32:
            raise SecretUnavailable(f"{path} does not hold a 256-bit key")
        self._aead = AESGCM(key)

    def seal(self, secret: str, *, context: str) -> str:
        """Encrypt ``secret`` bound to ``context`` (the tenant and endpoint id)."""
        nonce = os.urandom(_NONCE)
        sealed = self._aead.encrypt(nonce, secret.encode(), context.encode())
        return f"{_VERSION}:" + base64.b64encode(nonce + sealed).decode()

    def open(self, sealed: str, *, context: str) -> str:
        """Decrypt a sealed secret.

        Raises:
            SecretUnavailable: unknown format, another key, or another context.
        """
        version, _, payload = sealed.partition(":")
        try:
            if version != _VERSION:
                raise ValueError(version)
            raw = base64.b64decode(payload, validate=True)
            plain = self._aead.decrypt(raw[:_NONCE], raw[_NONCE:], context.encode())
        except (ValueError, binascii.Error, InvalidTag):
            raise SecretUnavailable("a webhook secret cannot be opened with this key") from None
        return plain.decode()


def endpoint_context(tenant_id: str, endpoint_id: str) -> str:
    """The associated data a secret is sealed under."""
    return f"webhook:{tenant_id}:{endpoint_id}"
