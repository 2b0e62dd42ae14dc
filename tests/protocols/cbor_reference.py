"""The first, straightforward deterministic CBOR encoder, kept as a test oracle.

``protocols.cbor.encode`` was rewritten for speed (type dispatch, table heads)
and ``protocols.manifest`` / ``protocols.cose`` assemble their fixed layouts
from pieces; the tests check that every one of them still writes exactly the
bytes this reference writes (RFC 8949 section 4.2.1, core deterministic encoding).
"""

from __future__ import annotations

from typing import Any

import cbor2

from protocols.cbor import Tag
from protocols.errors import MessageError

_UINT_LIMIT = 1 << 64
_KEY_TYPES = (int, str)


def reference_encode(value: Any, *, max_depth: int = 16) -> bytes:
    """Encode ``value`` as the original ``protocols.cbor.encode`` did."""
    try:
        return _encode(value, max_depth)
    except (ValueError, OverflowError, cbor2.CBOREncodeError) as exc:
        raise MessageError(f"value cannot be encoded as CBOR: {exc}") from exc


def _encode(value: Any, depth: int) -> bytes:
    if isinstance(value, (list, tuple, dict, Tag)):
        if depth < 1:
            raise MessageError("value nests deeper than the CBOR depth limit")
        return _encode_container(value, depth - 1)
    return _encode_scalar(value)


def _encode_scalar(value: object) -> bytes:
    if value is None:
        return b"\xf6"
    if isinstance(value, bool):
        return b"\xf5" if value else b"\xf4"
    if isinstance(value, int):
        if value >= 0:
            return _head(0, value)
        return _head(1, -1 - value)
    if isinstance(value, (bytes, str)):
        raw = value.encode("utf-8") if isinstance(value, str) else bytes(value)
        major = 3 if isinstance(value, str) else 2
        return _head(major, len(raw)) + raw
    if isinstance(value, float):
        return bytes(cbor2.dumps(float(value), canonical=True))
    raise MessageError(f"cannot encode {type(value).__name__} as CBOR")


def _encode_container(value: Any, depth: int) -> bytes:
    if isinstance(value, Tag):
        if not isinstance(value.tag, int) or isinstance(value.tag, bool):
            raise MessageError("a tag number must be an int")
        return _head(6, value.tag) + _encode(value.value, depth)
    if isinstance(value, dict):
        pairs = sorted((_encode_key(key), _encode(item, depth)) for key, item in value.items())
        return _head(5, len(pairs)) + b"".join(key + item for key, item in pairs)
    return _head(4, len(value)) + b"".join(_encode(item, depth) for item in value)


def _encode_key(key: Any) -> bytes:
    if not isinstance(key, _KEY_TYPES) or isinstance(key, bool):
        raise MessageError(f"map key of type {type(key).__name__} is not allowed")
    return _encode(key, 0)


def _head(major: int, argument: int) -> bytes:
    if argument < 0 or argument >= _UINT_LIMIT:
        raise MessageError(f"{argument} is outside the CBOR 64-bit argument range")
    if argument < 24:
        return bytes([major << 5 | argument])
    size = next(n for n in (1, 2, 4, 8) if argument < 1 << (8 * n))
    info = 23 + size.bit_length()
    return bytes([major << 5 | info]) + argument.to_bytes(size, "big")
