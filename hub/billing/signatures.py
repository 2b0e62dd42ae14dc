"""Webhook signatures: sign a body, and verify it on the receiving side (pure).

Every webhook request carries::

    X-Hub-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, f"{t}.{body}")>

where ``body`` is the exact bytes of the request body (UTF-8 JSON) and
``secret`` the endpoint's secret as UTF-8 bytes. Receivers recompute the HMAC
over the raw body before parsing it, compare in constant time, and refuse a
``t`` too far from their clock (replays). :func:`verify_signature` does all
three and raises; it never returns a bool.
"""

from __future__ import annotations

import hashlib
import hmac

from hub.errors import HubError

SIGNATURE_HEADER = "X-Hub-Signature"
DEFAULT_TOLERANCE_SECONDS = 300
_MAX_HEADER = 1024


class SignatureInvalid(HubError):
    """A webhook signature header is missing, malformed, stale or does not match."""

    code = "signature_invalid"
    http_status = 401


def compute_signature(secret: str, timestamp: int, body: bytes) -> str:
    """Hex HMAC-SHA256 of ``f"{timestamp}.".encode() + body`` under ``secret``."""
    message = f"{timestamp}.".encode() + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def signature_header(secret: str, timestamp: int, body: bytes) -> str:
    """The ``X-Hub-Signature`` value for ``body`` sent at ``timestamp``."""
    return f"t={timestamp},v1={compute_signature(secret, timestamp, body)}"


def _parse(header: str) -> tuple[int, list[str]]:
    if not header or len(header) > _MAX_HEADER:
        raise SignatureInvalid("missing or oversized signature header")
    timestamp: int | None = None
    signatures: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            raise SignatureInvalid("malformed signature header")
        if key == "t":
            if not value.isdigit() or timestamp is not None:
                raise SignatureInvalid("malformed signature timestamp")
            timestamp = int(value)
        elif key == "v1":
            signatures.append(value)
    if timestamp is None or not signatures:
        raise SignatureInvalid("signature header needs t= and v1=")
    return timestamp, signatures


def verify_signature(
    secret: str,
    header: str,
    body: bytes,
    *,
    now: int,
    tolerance_seconds: int = DEFAULT_TOLERANCE_SECONDS,
) -> int:
    """Check a webhook request's ``X-Hub-Signature`` against its raw body.

    Several ``v1=`` values are accepted (any one matching is enough), so a
    sender can sign with an old and a new secret during a rotation.

    Args:
        secret: the endpoint's secret, as shown once at creation.
        header: the ``X-Hub-Signature`` header value.
        body: the raw request body, before any JSON parsing.
        now: the receiver's clock, Unix seconds.
        tolerance_seconds: how far ``t`` may be from ``now``.

    Returns:
        The signed timestamp.

    Raises:
        SignatureInvalid: malformed header, stale timestamp or no matching signature.
    """
    timestamp, signatures = _parse(header)
    if abs(now - timestamp) > tolerance_seconds:
        raise SignatureInvalid("signature timestamp outside the tolerance window")
    expected = compute_signature(secret, timestamp, body).encode()
    matched = False
    for candidate in signatures:
        # Compare every candidate (no early exit) in constant time.
        matched |= hmac.compare_digest(expected, candidate.encode())
    if not matched:
        raise SignatureInvalid("signature does not match")
    return timestamp
