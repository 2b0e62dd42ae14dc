"""``fw_chunk`` payloads assembled from a fixed layout: the hot path of MQTT delivery.

Byte for byte what ``encode_message(FirmwareChunk(...))`` produces (deterministic
CBOR, keys 0..4 in order), without building and validating a message object and
walking a dict per chunk::

    a5                      map of 5
       00 01                v: 1
       01 68 "fw_chunk"     t
       02 78 1c "job-…"     job_id (28 characters)     } the prefix: per job
       03 <uint>            index                      } the tail: per package
       04 <bstr>            data                       } and index, any job

A payload is ``chunk_prefix(job) + tail``: the tails do not depend on the job,
so :class:`ChunkTails` encodes them once per package and keeps them in a
byte-bounded LRU (every device of a rollout pulls the same package).

Inputs come from the database and the blob store (a stored job id, a chunk of
1..chunk_size bytes), so there is nothing untrusted to validate here;
``tests/hub/firmware/test_wire.py`` checks the equality with the generic encoder.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable

from hub.firmware.errors import BlobError
from protocols import cbor
from protocols.firmware_messages import FirmwareChunk
from protocols.messages import KEY_TYPE, KEY_VERSION, PROTOCOL_VERSION

_MAP_OF_5 = b"\xa5"
_INDEX_KEY = cbor.encode_uint(3)
_DATA_KEY = cbor.encode_uint(4)

CACHE_BYTES = 64 * 1024 * 1024
"""Default bound of a :class:`ChunkTails` cache (encoded tails of whole packages)."""


def chunk_prefix(job_id: str) -> bytes:
    """Everything of a ``fw_chunk`` before its index: map head, v, t, job id and key 3."""
    return b"".join(
        (
            _MAP_OF_5,
            cbor.encode_uint(KEY_VERSION),
            cbor.encode_uint(PROTOCOL_VERSION),
            cbor.encode_uint(KEY_TYPE),
            cbor.encode_text(FirmwareChunk.TYPE),
            cbor.encode_uint(2),
            cbor.encode_text(job_id),
            _INDEX_KEY,
        )
    )


def chunk_tails(first_index: int, data: bytes, chunk_size: int) -> list[bytes]:
    """The job-independent ends (index, key 4, data) of the chunks of ``data``."""
    view = memoryview(data)
    return [
        b"".join(
            (
                cbor.encode_uint(first_index + offset // chunk_size),
                _DATA_KEY,
                cbor.encode_bstr(bytes(view[offset : offset + chunk_size])),
            )
        )
        for offset in range(0, len(data), chunk_size)
    ]


def chunk_payloads(job_id: str, first_index: int, data: bytes, chunk_size: int) -> list[bytes]:
    """The ``fw_chunk`` payloads of ``data`` cut into ``chunk_size`` pieces from ``first_index``."""
    prefix = chunk_prefix(job_id)
    return [prefix + tail for tail in chunk_tails(first_index, data, chunk_size)]


class ChunkTails:
    """A byte-bounded LRU of packages' encoded chunk tails, keyed by package id.

    Packages never change once committed, so an entry is never stale; the
    bound is the only reason to forget one. A package larger than a quarter
    of the bound is not kept (it would evict everything else); its callers
    read it from the blob store per request. Thread-safe (one lock; loading
    happens outside it, so two threads may load the same package once each).
    """

    def __init__(self, max_bytes: int = CACHE_BYTES) -> None:
        self._max_bytes = max_bytes
        self._bytes = 0
        self._entries: OrderedDict[str, tuple[list[bytes], int]] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def size_bytes(self) -> int:
        """Bytes of the tails held now."""
        return self._bytes

    def fits(self, size: int) -> bool:
        """Whether a package of ``size`` payload bytes would be kept."""
        return size <= self._max_bytes // 4

    def get(
        self, package_id: str, size: int, chunk_size: int, load: Callable[[], bytes]
    ) -> list[bytes] | None:
        """The tails of every chunk of the package, loading its payload once with ``load``.

        Returns ``None`` when the package is too large to keep (see :meth:`fits`).

        Raises:
            BlobError: ``load`` failed, or returned other than ``size`` bytes.
        """
        with self._lock:
            entry = self._entries.get(package_id)
            if entry is not None:
                self._entries.move_to_end(package_id)
                return entry[0]
        if not self.fits(size):
            return None
        data = load()
        if len(data) != size:
            raise BlobError(f"package {package_id}: {len(data)} payload bytes, expected {size}")
        tails = chunk_tails(0, data, chunk_size)
        weight = sum(len(tail) for tail in tails)
        with self._lock:
            if package_id not in self._entries:
                self._entries[package_id] = (tails, weight)
                self._bytes += weight
            while self._bytes > self._max_bytes and len(self._entries) > 1:
                _, (_, dropped) = self._entries.popitem(last=False)
                self._bytes -= dropped
        return tails
