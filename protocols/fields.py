"""Field declarations shared by every message module.

A message is a frozen dataclass whose fields each carry a CBOR map key and a
validator (:func:`key`). The validators here are the building blocks; message
modules (:mod:`protocols.messages`, :mod:`protocols.usage_messages`,
:mod:`protocols.firmware_messages`) combine them and register their types in
:data:`protocols.messages.MESSAGE_TYPES`.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from protocols.errors import MessageError

MAX_TEXT = 256
UINT64_MAX = 2**64 - 1


def key(number: int, check: Callable[[Any], Any], *, optional: bool = False) -> Any:
    """Declare a message field carried under CBOR map key ``number``."""
    meta = {"key": number, "check": check, "optional": optional}
    if optional:
        return field(default=None, metadata=meta)
    return field(metadata=meta)


def text(max_length: int = MAX_TEXT) -> Callable[[Any], str]:
    """Validator: non-empty text up to ``max_length`` characters, no control characters."""

    def check(value: Any) -> str:
        if not isinstance(value, str):
            raise MessageError("expected text")
        if not 0 < len(value) <= max_length:
            raise MessageError(f"text length must be 1..{max_length}")
        if any(unicodedata.category(ch) == "Cc" for ch in value):  # C0, DEL and C1
            raise MessageError("control character in text")
        return value

    return check


def byte_string(min_length: int, max_length: int) -> Callable[[Any], bytes]:
    """Validator: a byte string of ``min_length..max_length`` bytes."""

    def check(value: Any) -> bytes:
        if not isinstance(value, bytes):
            raise MessageError("expected a byte string")
        if not min_length <= len(value) <= max_length:
            raise MessageError(f"byte string length must be {min_length}..{max_length}")
        return value

    return check


def uint(value: Any) -> int:
    """Validate an unsigned 64-bit integer (booleans refused)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= UINT64_MAX:
        raise MessageError("expected an unsigned integer")
    return value


def integer(value: Any) -> int:
    """Validate a signed integer within 64 bits of magnitude (booleans refused)."""
    if isinstance(value, bool) or not isinstance(value, int) or abs(value) > UINT64_MAX:
        raise MessageError("expected an integer")
    return value


def boolean(value: Any) -> bool:
    """Validate a CBOR boolean."""
    if not isinstance(value, bool):
        raise MessageError("expected a boolean")
    return value


def one_of(*allowed: str) -> Callable[[Any], str]:
    """Validator: one of the ``allowed`` texts."""

    def check(value: Any) -> str:
        if value not in allowed:
            raise MessageError(f"must be one of {', '.join(allowed)}")
        return str(value)

    return check


@dataclass(frozen=True, slots=True)
class Message:
    """Base class: every message knows its type tag and protocol version."""

    TYPE: ClassVar[str] = ""
