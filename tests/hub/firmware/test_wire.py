"""The assembled ``fw_chunk`` layout equals the generic message encoder, byte for byte."""

from __future__ import annotations

import os

import pytest

from hub.firmware.errors import BlobError
from hub.firmware.wire import ChunkTails, chunk_payloads, chunk_prefix
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


def test_cached_tails_make_the_same_payloads_for_every_job() -> None:
    data = os.urandom(5000)
    tails = ChunkTails(max_bytes=1 << 20)
    loads: list[int] = []

    def load() -> bytes:
        loads.append(1)
        return data

    for job in (JOB, "job-fedcba9876543210fedcba98"):
        got = tails.get("pkg-1", len(data), 1024, load)
        assert got is not None
        assert [chunk_prefix(job) + tail for tail in got] == chunk_payloads(job, 0, data, 1024)
    assert loads == [1]  # read once, then served from memory


def test_the_tail_cache_is_bounded_by_bytes_least_recently_used_first() -> None:
    tails = ChunkTails(max_bytes=12_000)
    payloads = {name: os.urandom(3000) for name in ("a", "b", "c", "d", "e")}
    for name in ("a", "b", "c"):
        tails.get(name, 3000, 1024, lambda name=name: payloads[name])  # type: ignore[misc]
    tails.get("a", 3000, 1024, lambda: pytest.fail("a is cached"))  # a is now the newest
    for name in ("d", "e"):
        tails.get(name, 3000, 1024, lambda name=name: payloads[name])  # type: ignore[misc]
    assert tails.size_bytes <= 12_000
    for name in ("a", "d", "e"):  # b and c, the least recently used, went; a stayed
        tails.get(name, 3000, 1024, lambda: pytest.fail("cached"))
    reloaded: list[str] = []
    tails.get("b", 3000, 1024, lambda: reloaded.append("b") or payloads["b"])
    assert reloaded == ["b"]


def test_a_package_over_a_quarter_of_the_bound_is_not_cached() -> None:
    tails = ChunkTails(max_bytes=4096)
    assert not tails.fits(1025) and tails.fits(1024)
    assert tails.get("big", 2000, 1024, lambda: pytest.fail("not loaded")) is None
    assert tails.size_bytes == 0


def test_a_short_blob_is_an_error_not_a_cached_truncation() -> None:
    tails = ChunkTails()
    with pytest.raises(BlobError):
        tails.get("p", 5000, 1024, lambda: b"x" * 4000)
    assert tails.size_bytes == 0
