"""MQTT password hashing in Mosquitto's ``$7$`` format (PBKDF2-HMAC-SHA512).

One stored form serves both brokers: the embedded broker's plugin verifies it
here, and the generated Mosquitto password file carries it unchanged. MQTT
secrets are 256-bit random values minted by the hub, so a modest iteration
count does not weaken them and keeps thousands of logins per second cheap.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

ITERATIONS = 101
_SALT_BYTES = 12


def new_secret() -> str:
    """Mint a fresh 256-bit MQTT secret, URL-safe text."""
    return secrets.token_urlsafe(32)


def hash_password(secret: str, *, iterations: int = ITERATIONS, salt: bytes | None = None) -> str:
    """Hash ``secret`` into ``$7$<iterations>$<salt b64>$<hash b64>``."""
    salt = salt if salt is not None else secrets.token_bytes(_SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", secret.encode(), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify_password(secret: str, encoded: str) -> bool:
    """Check ``secret`` against an encoded hash in constant time; never raises."""
    try:
        _, kind, iterations_text, salt_b64, digest_b64 = encoded.split("$")
        iterations = int(iterations_text)
        salt = base64.b64decode(salt_b64, validate=True)
        expected = base64.b64decode(digest_b64, validate=True)
    except (ValueError, TypeError):
        return False
    if kind != "7" or not 1 <= iterations <= 1_000_000:
        return False
    actual = hashlib.pbkdf2_hmac("sha512", secret.encode(), salt, iterations)
    return hmac.compare_digest(actual, expected)
