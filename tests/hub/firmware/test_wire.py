"""The assembled ``fw_chunk`` layout equals the generic message encoder, byte for byte."""

from __future__ import annotations

import os

import pytest

from hub.firmware.wire import chunk_payloads
from protocols.firmware_messages import FirmwareChunk
from protocols.messages import decode_message, encode_message

JOB = "job-0123456789abcdef01234567"


SIZES = [
    (1, 1024),
    (23, 1024),
    (24, 1024),
    (255, 1024),
    (256, 1024),
    (5000, 1024),
    (70_000, 32_768),
]


@pytest.mark.parametrize("first", [0, 1, 23, 24, 255, 256, 65_535, 65_536, 2**32])
@pytest.mark.parametrize(("size", "chunk"), SIZES)
def test_assembled_chunks_equal_the_generic_encoding(first: int, size: int, chunk: int) -> None:
    data = os.urandom(size)
    payloads = chunk_payloads(JOB, first, data, chunk)
    expected = [
        encode_message(
            FirmwareChunk(job_id=JOB, index=first + i // chunk, data=data[i : i + chunk])
        )
        for i in range(0, size, chunk)
    ]
    assert payloads == expected
    decoded = [decode_message(p) for p in payloads]
    assert all(isinstance(m, FirmwareChunk) and m.job_id == JOB for m in decoded)
    assert b"".join(m.data for m in decoded if isinstance(m, FirmwareChunk)) == data
