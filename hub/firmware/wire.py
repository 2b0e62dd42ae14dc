"""``fw_chunk`` payloads assembled from a fixed layout: the hot path of MQTT delivery.

Byte for byte what ``encode_message(FirmwareChunk(...))`` produces (deterministic
CBOR, keys 0..4 in order), without building and validating a message object and
walking a dict per chunk::

    a5                      map of 5
       00 01                v: 1
       01 68 "fw_chunk"     t
       02 78 1c "job-…"     job_id (28 characters)
       03 <uint>            index
       04 <bstr>            data

Inputs come from the database and the blob store (a stored job id, a chunk of
1..chunk_size bytes), so there is nothing untrusted to validate here;
``tests/hub/firmware/test_wire.py`` checks the equality with the generic encoder.
"""

from __future__ import annotations

from protocols import cbor
from protocols.firmware_messages import FirmwareChunk
from protocols.messages import KEY_TYPE, KEY_VERSION, PROTOCOL_VERSION

_MAP_OF_5 = b"\xa5"


def chunk_prefix(job_id: str) -> bytes:
    """Everything of a ``fw_chunk`` before its index: map head, v, t and job id."""
    return b"".join(
        (
            _MAP_OF_5,
            cbor.encode_uint(KEY_VERSION),
            cbor.encode_uint(PROTOCOL_VERSION),
            cbor.encode_uint(KEY_TYPE),
            cbor.encode_text(FirmwareChunk.TYPE),
            cbor.encode_uint(2),
            cbor.encode_text(job_id),
            cbor.encode_uint(3),
        )
    )


def chunk_payloads(job_id: str, first_index: int, data: bytes, chunk_size: int) -> list[bytes]:
    """The ``fw_chunk`` payloads of ``data`` cut into ``chunk_size`` pieces from ``first_index``."""
    prefix = chunk_prefix(job_id)
    data_key = cbor.encode_uint(4)
    return [
        b"".join(
            (
                prefix,
                cbor.encode_uint(first_index + offset // chunk_size),
                data_key,
                cbor.encode_bstr(data[offset : offset + chunk_size]),
            )
        )
        for offset in range(0, len(data), chunk_size)
    ]
