"""Identifier rules shared by topics, MQTT usernames and the registry.

Ids travel inside MQTT topics and usernames, so the characters that carry
meaning there (``+``, ``#``, ``/``), control characters, whitespace and
anything outside a small ASCII set are never valid.
"""

from __future__ import annotations

import re

from protocols.errors import TopicError

ID_MAX_LENGTH = 64
_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

DEVICE_ID_PREFIX = "dev-"
CLAIM_CLIENT_PREFIX = "claim-"
HUB_CLIENT_PREFIX = "hub-"


def is_valid_id(value: str) -> bool:
    """Return whether ``value`` is acceptable as an id in a topic or username."""
    return _ID_PATTERN.fullmatch(value) is not None


def check_id(value: str, what: str = "id") -> str:
    """Return ``value`` unchanged if it is a valid id.

    Raises:
        TopicError: when the id is empty, too long, or holds a forbidden character.
    """
    if not isinstance(value, str) or not is_valid_id(value):
        raise TopicError(f"invalid {what}: {value!r}")
    return value


def is_device_id(value: str) -> bool:
    """Return whether ``value`` has the shape of a hub-issued device id."""
    return is_valid_id(value) and value.startswith(DEVICE_ID_PREFIX)


def is_claim_client_id(value: str) -> bool:
    """Return whether ``value`` is a provisioning (claim) session's client id."""
    return is_valid_id(value) and value.startswith(CLAIM_CLIENT_PREFIX) and len(value) > 6
