"""The ``usage_ack`` payload, encoded without the generic encoder's per-item dispatch.

An ack lists up to 1,000 ``[boot_epoch, seq, code]`` results; the generic
deterministic encoder (:func:`protocols.messages.encode_message`) walks them
item by item and cost about as much as storing the records. This builds the
very same bytes directly: a map ``{0: 1, 1: "usage_ack", 2: [...]}`` with
shortest-form heads (RFC 8949 core deterministic encoding, the keys in
order). ``tests/hub/telemetry/test_acks.py`` holds it byte-for-byte equal to
``encode_message(UsageAck(...))`` for any results.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence

from protocols.messages import PROTOCOL_VERSION
from protocols.usage_messages import ACK_CODES, MAX_RECORDS, UsageAck

_UINT, _TSTR, _ARRAY = 0x00, 0x60, 0x80


def _head(major: int, value: int) -> bytes:
    if value < 24:
        return bytes((major | value,))
    if value < 0x100:
        return bytes((major | 24, value))
    if value < 0x10000:
        return bytes((major | 25,)) + struct.pack(">H", value)
    if value < 0x100000000:
        return bytes((major | 26,)) + struct.pack(">I", value)
    return bytes((major | 27,)) + struct.pack(">Q", value)


def _text(value: str) -> bytes:
    raw = value.encode()
    return _head(_TSTR, len(raw)) + raw


_SMALL = [_head(_UINT, n) for n in range(0x10000)]
_CODES = {code: _text(code) for code in ACK_CODES}
_PREFIX = (
    b"\xa3" + _head(_UINT, 0) + _head(_UINT, PROTOCOL_VERSION)
    + _head(_UINT, 1) + _text(UsageAck.TYPE) + _head(_UINT, 2)
)  # fmt: skip
_RESULT = b"\x83"


def _uint(value: int) -> bytes:
    return _SMALL[value] if value < 0x10000 else _head(_UINT, value)


def encode_ack(results: Sequence[tuple[int, int, str]] | Iterable[tuple[int, int, str]]) -> bytes:
    """The ``usage_ack`` message for ``results`` (1..1000 ``(boot_epoch, seq, code)``).

    Raises:
        ValueError: no results, too many, an unknown code or a key out of range.
    """
    items = list(results)
    if not 1 <= len(items) <= MAX_RECORDS:
        raise ValueError(f"an ack holds 1..{MAX_RECORDS} results, not {len(items)}")
    parts = [_PREFIX, _head(_ARRAY, len(items))]
    for boot_epoch, seq, code in items:
        if not (0 <= boot_epoch < 2**64 and 0 <= seq < 2**64) or code not in _CODES:
            raise ValueError(f"not an ack result: {(boot_epoch, seq, code)!r}")
        parts.append(_RESULT + _uint(boot_epoch) + _uint(seq) + _CODES[code])
    return b"".join(parts)
