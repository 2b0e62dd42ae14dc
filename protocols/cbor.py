"""Strict CBOR codec: the only module that talks to cbor2.

Decoding accepts one well-formed CBOR item and nothing else: the size cap is
checked before decoding, duplicate map keys, indefinite lengths, nesting deeper
than ``max_depth``, trailing bytes, invalid UTF-8, ``undefined``, simple values
other than false/true/null, map keys other than int or text, and every tag the
caller did not allow are refused. Any failure is a :class:`DecodeError`.

The data model in both directions is: ``None``, ``bool``, ``int`` (64-bit
CBOR range), ``float``, ``str``, ``bytes``, ``list``, ``dict`` (int or str
keys) and :class:`Tag`.

Encoding is deterministic per RFC 8949 section 4.2.1 (core deterministic
encoding): shortest heads, shortest float form that preserves the value,
definite lengths, map keys sorted bytewise by their encoded form.
"""

from __future__ import annotations

import functools
import io
import struct
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import cbor2

from protocols.errors import DecodeError, MessageError, PayloadTooLarge

DEFAULT_MAX_SIZE = 64 * 1024
DEFAULT_MAX_DEPTH = 16

_UINT_LIMIT = 1 << 64
_MAJOR_UINT, _MAJOR_NINT, _MAJOR_BSTR, _MAJOR_TSTR = 0, 1, 2, 3
_MAJOR_ARRAY, _MAJOR_MAP, _MAJOR_TAG = 4, 5, 6
_SCALAR_TYPES = (type(None), bool, int, float, str, bytes)
_KEY_TYPES = (int, str)
_SCALAR_TYPE_SET = frozenset(_SCALAR_TYPES)


@dataclass(frozen=True)
class Tag:
    """A CBOR tagged item; cbor2's own tag type never leaves this module.

    Attributes:
        tag: The tag number (0 to 2**64 - 1).
        value: The tagged item, itself in the codec's data model.
    """

    tag: int
    value: Any


_TagCallback = Callable[[Any, bool], Any]


class _TagGate(Mapping[int, _TagCallback]):
    """A ``semantic_decoders`` mapping that answers for every tag number.

    cbor2 looks every tag up here before its built-in decoders, so answering
    for all numbers disables its implicit semantics (datetimes, bignums,
    shared references, sets, self-describe ...), which would otherwise turn
    attacker bytes into arbitrary Python objects.
    """

    def __init__(self, allowed: frozenset[int]) -> None:
        self._allowed = allowed

    def __getitem__(self, tag: int) -> _TagCallback:
        if tag in self._allowed:
            return lambda value, _immutable: Tag(tag, value)
        return _refuse_tag(tag)

    def __iter__(self) -> Iterator[int]:
        return iter(self._allowed)

    def __len__(self) -> int:
        return len(self._allowed)


@functools.lru_cache(maxsize=32)
def _tag_gate(allowed: frozenset[int]) -> _TagGate:
    """The (stateless) gate for one set of allowed tags, built once."""
    return _TagGate(allowed)


def _refuse_tag(tag: int) -> _TagCallback:
    def refuse(_value: Any, _immutable: bool) -> Any:
        raise DecodeError(f"CBOR tag {tag} is not allowed here")

    return refuse


def decode(
    data: bytes,
    *,
    max_size: int = DEFAULT_MAX_SIZE,
    max_depth: int = DEFAULT_MAX_DEPTH,
    allowed_tags: frozenset[int] = frozenset(),
) -> Any:
    """Decode exactly one strict CBOR item from ``data``.

    Args:
        data: The encoded item; must be ``bytes``.
        max_size: Largest accepted input, checked before any decoding.
        max_depth: Deepest accepted nesting of arrays, maps and tags.
        allowed_tags: Tag numbers returned as :class:`Tag`; any other tag fails.

    Returns:
        The decoded item in the codec's data model.

    Raises:
        PayloadTooLarge: ``data`` is longer than ``max_size``.
        DecodeError: ``data`` is not one strict, well-formed CBOR item.
    """
    if not isinstance(data, bytes):
        raise DecodeError(f"CBOR input must be bytes, not {type(data).__name__}")
    if len(data) > max_size:
        raise PayloadTooLarge(f"payload of {len(data)} bytes exceeds the {max_size}-byte cap")
    fp = io.BytesIO(data)
    try:
        decoder = cbor2.CBORDecoder(
            fp,
            semantic_decoders=_tag_gate(frozenset(allowed_tags)),
            max_depth=max_depth,
            allow_indefinite=False,
            allow_duplicate_keys=False,
        )
        value = decoder.decode()
    except Exception as exc:
        # cbor2 raises CBORDecodeError, but also ValueError, OverflowError,
        # RecursionError, MemoryError ...: arbitrary bytes may only raise ours.
        # A refused tag arrives wrapped by cbor2; keep our clearer message.
        reason = exc.__cause__ if isinstance(exc.__cause__, DecodeError) else exc
        raise DecodeError(f"malformed CBOR: {reason}") from exc
    if fp.tell() != len(data):
        raise DecodeError(f"{len(data) - fp.tell()} trailing bytes after the CBOR item")
    _check_data_model(value)
    return value


def _check_data_model(value: Any) -> None:
    # Iterative so a caller-chosen large max_depth cannot exhaust the stack.
    stack = [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind in _SCALAR_TYPE_SET:
            continue
        if kind is list:
            stack.extend(item)
        elif kind is dict:
            for key in item:
                if type(key) not in _KEY_TYPES:
                    raise DecodeError(f"map key of type {type(key).__name__} is not allowed")
            stack.extend(item.values())
        elif kind is Tag:
            stack.append(item.value)
        else:
            # undefined, simple(n) and anything cbor2 might produce one day.
            raise DecodeError(f"CBOR item of type {kind.__name__} is not allowed")


def leading_tag(data: bytes) -> int | None:
    """Read the tag number of a tagged item without decoding the rest.

    Lets a caller refuse a wrong outer tag as a step of its own, before the
    tag gate of :func:`decode` would report it as a generic decode error.

    Args:
        data: The encoded item.

    Returns:
        The outermost tag number, or ``None`` if the item is not tagged.

    Raises:
        DecodeError: ``data`` is empty, not bytes, or its tag head is malformed.
    """
    if not isinstance(data, bytes) or not data:
        raise DecodeError("CBOR input must be non-empty bytes")
    major, info = data[0] >> 5, data[0] & 0x1F
    if major != _MAJOR_TAG:
        return None
    if info < 24:
        return info
    if info > 27:
        raise DecodeError(f"reserved additional information {info} in a tag head")
    size = 1 << (info - 24)
    if len(data) < 1 + size:
        raise DecodeError("truncated tag head")
    return int.from_bytes(data[1 : 1 + size], "big")


def encode(value: Any, *, max_depth: int = DEFAULT_MAX_DEPTH) -> bytes:
    """Encode ``value`` deterministically (RFC 8949 core deterministic encoding).

    Args:
        value: An item of the codec's data model; tuples encode as arrays.
        max_depth: Deepest accepted nesting, so the output decodes under the
            same limit (this also stops cyclic structures).

    Returns:
        The encoded bytes.

    Raises:
        MessageError: ``value`` is outside the data model or too deep.
    """
    try:
        return _encode(value, max_depth)
    except (ValueError, OverflowError, cbor2.CBOREncodeError) as exc:
        raise MessageError(f"value cannot be encoded as CBOR: {exc}") from exc


def encode_bstr(value: bytes) -> bytes:
    """Encode one byte string (head and content): ``encode(value)`` without the dispatch.

    For callers that assemble a fixed layout around opaque bytes (COSE).
    """
    return _head(_MAJOR_BSTR, len(value)) + value


def encode_uint(value: int) -> bytes:
    """Encode an unsigned integer (0 to 2**64 - 1): ``encode(value)`` without the dispatch.

    Raises:
        MessageError: ``value`` is not an int in that range.
    """
    if type(value) is not int and (not isinstance(value, int) or isinstance(value, bool)):
        raise MessageError(f"expected an unsigned integer, not {type(value).__name__}")
    if value < 0:
        raise MessageError(f"{value} is not an unsigned integer")
    return _head(_MAJOR_UINT, value)


def encode_text(value: str) -> bytes:
    """Encode a text string: ``encode(value)`` without the dispatch.

    Raises:
        MessageError: ``value`` is not a str, or not encodable as UTF-8.
    """
    if not isinstance(value, str):
        raise MessageError(f"expected a text string, not {type(value).__name__}")
    try:
        raw = value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise MessageError(f"value cannot be encoded as CBOR: {exc}") from exc
    return _head(_MAJOR_TSTR, len(raw)) + raw


# The encoder dispatches on the exact type (the common case) and falls back to
# isinstance checks for subclasses (IntEnum, StrEnum, NamedTuple, OrderedDict...),
# which encode as their base type. Heads are looked up or packed, never built
# byte by byte: this codec signs every manifest of a fleet-wide change.


def _encode(value: Any, depth: int) -> bytes:
    encoder = _BY_TYPE.get(type(value))
    if encoder is None:
        return _encode_subclass(value, depth)
    return encoder(value, depth)


def _encode_none(_value: None, _depth: int) -> bytes:
    return b"\xf6"


def _encode_bool(value: bool, _depth: int) -> bytes:
    return b"\xf5" if value else b"\xf4"


def _encode_int(value: int, _depth: int) -> bytes:
    if value >= 0:
        return _head(_MAJOR_UINT, value)
    return _head(_MAJOR_NINT, -1 - value)


def _encode_str(value: str, _depth: int) -> bytes:
    raw = value.encode("utf-8")
    return _head(_MAJOR_TSTR, len(raw)) + raw


def _encode_bytes(value: bytes, _depth: int) -> bytes:
    return _head(_MAJOR_BSTR, len(value)) + value


def _encode_float(value: float, _depth: int) -> bytes:
    # cbor2's canonical mode picks the shortest float that keeps the value.
    return bytes(cbor2.dumps(float(value), canonical=True))


def _too_deep() -> MessageError:
    return MessageError("value nests deeper than the CBOR depth limit")


def _encode_array(value: list[Any] | tuple[Any, ...], depth: int) -> bytes:
    if depth < 1:
        raise _too_deep()
    depth -= 1
    return _head(_MAJOR_ARRAY, len(value)) + b"".join([_encode(item, depth) for item in value])


def _encode_map(value: dict[Any, Any], depth: int) -> bytes:
    if depth < 1:
        raise _too_deep()
    depth -= 1
    # Distinct keys have distinct encodings, so sorting the pairs sorts the keys.
    pairs = sorted([(_encode_key(key), _encode(item, depth)) for key, item in value.items()])
    return _head(_MAJOR_MAP, len(pairs)) + b"".join([key + item for key, item in pairs])


def _encode_tag(value: Tag, depth: int) -> bytes:
    if depth < 1:
        raise _too_deep()
    if not isinstance(value.tag, int) or isinstance(value.tag, bool):
        raise MessageError("a tag number must be an int")
    return _head(_MAJOR_TAG, value.tag) + _encode(value.value, depth - 1)


def _encode_key(key: Any) -> bytes:
    kind = type(key)
    if kind is str:
        return _encode_str(key, 0)
    if kind is int:
        return _encode_int(key, 0)
    if not isinstance(key, _KEY_TYPES) or isinstance(key, bool):
        raise MessageError(f"map key of type {kind.__name__} is not allowed")
    return _encode_subclass(key, 0)


def _encode_subclass(value: Any, depth: int) -> bytes:
    for base, encoder in _BY_BASE_TYPE:
        if isinstance(value, base):
            return encoder(value, depth)
    raise MessageError(f"cannot encode {type(value).__name__} as CBOR")


def _encode_bytes_subclass(value: bytes, depth: int) -> bytes:
    return _encode_bytes(bytes(value), depth)


_BY_TYPE: dict[type, Callable[[Any, int], bytes]] = {
    type(None): _encode_none,
    bool: _encode_bool,
    int: _encode_int,
    str: _encode_str,
    bytes: _encode_bytes,
    float: _encode_float,
    list: _encode_array,
    tuple: _encode_array,
    dict: _encode_map,
    Tag: _encode_tag,
}

# Subclasses encode as their base type; containers before scalars and Tag before
# dict, the order of the data model. bool is final: no subclass reaches here.
_BY_BASE_TYPE: tuple[tuple[type, Callable[[Any, int], bytes]], ...] = (
    (Tag, _encode_tag),
    (dict, _encode_map),
    (list, _encode_array),
    (tuple, _encode_array),
    (int, _encode_int),
    (str, _encode_str),
    (bytes, _encode_bytes_subclass),
    (float, _encode_float),
)

# Heads of arguments 0..255 for every major type, and packers for the longer forms.
_SHORT_HEADS = tuple(
    tuple(bytes([major << 5 | n]) if n < 24 else bytes([major << 5 | 24, n]) for n in range(256))
    for major in range(8)
)
_PACK_2 = struct.Struct(">BH").pack
_PACK_4 = struct.Struct(">BI").pack
_PACK_8 = struct.Struct(">BQ").pack


def _head(major: int, argument: int) -> bytes:
    if 0 <= argument < 256:
        return _SHORT_HEADS[major][argument]
    if argument < 0 or argument >= _UINT_LIMIT:
        raise MessageError(f"{argument} is outside the CBOR 64-bit argument range")
    if argument < 0x10000:
        return _PACK_2(major << 5 | 25, argument)
    if argument < 0x1_0000_0000:
        return _PACK_4(major << 5 | 26, argument)
    return _PACK_8(major << 5 | 27, argument)
