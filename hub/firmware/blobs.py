"""Firmware payload storage behind a small interface; local disk by default.

A :class:`BlobStore` stores opaque payloads under hub-chosen keys. ``put``
streams the payload into a temporary file while computing its SHA-256 and
size, fsyncs it and renames it into place atomically, so a key either names a
complete payload or nothing. An object store (S3 and the like) only has to
implement the same five methods.

The catalogue writes the blob *before* the package row and deletes it when
the row cannot be committed; :func:`hub.firmware.catalogue.sweep_orphans`
removes blobs no package references (a crash between the two steps) and
stale temporary files.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO, Protocol

from hub.firmware.errors import BlobError, PackageTooLarge

READ_BLOCK = 1024 * 1024
_KEY = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True, slots=True)
class BlobInfo:
    """A stored payload: its key, size in bytes and SHA-256 (hex)."""

    key: str
    size: int
    sha256: str


class BlobStore(Protocol):
    """Where firmware payloads live."""

    def put(self, stream: BinaryIO, *, max_size: int) -> BlobInfo:
        """Store everything ``stream`` yields; at most ``max_size`` bytes.

        Raises:
            PackageTooLarge: the stream is longer than ``max_size`` (nothing is kept).
            BlobError: the payload could not be written.
        """
        ...

    def read_range(self, key: str, start: int, end: int) -> bytes:
        """Bytes ``start`` up to (not including) ``end`` of blob ``key``.

        Raises:
            BlobError: no such blob, or the range lies outside it.
        """
        ...

    def iter_range(self, key: str, start: int, end: int) -> Iterator[bytes]:
        """Like :meth:`read_range`, in blocks, for streaming responses."""
        ...

    def delete(self, key: str) -> None:
        """Remove blob ``key`` (no error when it is already gone)."""
        ...

    def list_blobs(self) -> Iterator[tuple[str, datetime]]:
        """Every stored key with its creation time (for the orphan sweep)."""
        ...

    def sweep_temporary(self, older_than: datetime) -> int:
        """Remove unfinished uploads started before ``older_than``; returns how many."""
        ...


class LocalBlobStore:
    """Blobs as files under ``root`` (``root/ab/abcd...``), temporary files in ``root/tmp``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._tmp = root / "tmp"

    def _path(self, key: str) -> Path:
        if not isinstance(key, str) or _KEY.fullmatch(key) is None:
            raise BlobError(f"invalid blob key {key!r}")
        return self.root / key[:2] / key

    def put(self, stream: BinaryIO, *, max_size: int) -> BlobInfo:
        """Stream into a temp file (hashing and counting), fsync, rename into place."""
        self._tmp.mkdir(parents=True, exist_ok=True)
        fd, temp_name = tempfile.mkstemp(dir=self._tmp, prefix="upload-")
        temp = Path(temp_name)
        try:
            digest, size = _copy_hashed(stream, fd, max_size)
            key = secrets.token_hex(16)
            final = self._path(key)
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(temp, final)
            _fsync_dir(final.parent)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        return BlobInfo(key=key, size=size, sha256=digest)

    def read_range(self, key: str, start: int, end: int) -> bytes:
        """Read ``[start, end)`` of blob ``key``."""
        return b"".join(self.iter_range(key, start, end))

    def iter_range(self, key: str, start: int, end: int) -> Iterator[bytes]:
        """Yield ``[start, end)`` of blob ``key`` in blocks of at most 1 MiB."""
        path = self._path(key)
        try:
            handle = path.open("rb")
        except OSError as exc:
            raise BlobError(f"blob {key} cannot be read: {exc.strerror}") from exc
        with handle:
            size = os.fstat(handle.fileno()).st_size
            if not 0 <= start <= end <= size:
                raise BlobError(f"range {start}-{end} outside blob {key} of {size} bytes")
            handle.seek(start)
            remaining = end - start
            while remaining > 0:
                block = handle.read(min(READ_BLOCK, remaining))
                if not block:
                    raise BlobError(f"blob {key} ended early")
                remaining -= len(block)
                yield block

    def delete(self, key: str) -> None:
        """Remove blob ``key``."""
        self._path(key).unlink(missing_ok=True)

    def list_blobs(self) -> Iterator[tuple[str, datetime]]:
        """Every stored key with its modification time."""
        if not self.root.is_dir():
            return
        for shard in sorted(self.root.iterdir()):
            if shard.name == "tmp" or not shard.is_dir():
                continue
            for path in sorted(shard.iterdir()):
                if _KEY.fullmatch(path.name):
                    yield path.name, _mtime(path)

    def sweep_temporary(self, older_than: datetime) -> int:
        """Remove temp files of uploads that never finished."""
        if not self._tmp.is_dir():
            return 0
        removed = 0
        for path in self._tmp.iterdir():
            if _mtime(path) < older_than:
                path.unlink(missing_ok=True)
                removed += 1
        return removed


def _copy_hashed(stream: BinaryIO, fd: int, max_size: int) -> tuple[str, int]:
    """Copy ``stream`` into ``fd`` (then fsync and close it); returns SHA-256 hex and size."""
    hasher = hashlib.sha256()
    size = 0
    with os.fdopen(fd, "wb") as out:
        while block := stream.read(READ_BLOCK):
            size += len(block)
            if size > max_size:
                raise PackageTooLarge(f"payload larger than {max_size} bytes")
            hasher.update(block)
            out.write(block)
        out.flush()
        os.fsync(out.fileno())
    return hasher.hexdigest(), size


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _mtime(path: Path) -> datetime:
    return datetime.fromtimestamp(path.stat().st_mtime, tz=UTC)
