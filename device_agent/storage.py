"""Atomic on-disk state: write to a temp file, fsync, rename, fsync the directory.

A crash at any point leaves either the old file or the new one, never a torn
mix; that is what lets the agent promise it never forgets what it accepted.
"""

from __future__ import annotations

import os
from pathlib import Path

from device_agent.errors import StateError


def atomic_write(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` atomically and durably.

    Raises:
        StateError: when the directory or file cannot be written.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        raise StateError(f"cannot write {path}: {exc}") from exc


def read_optional(path: Path) -> bytes | None:
    """Return the file's bytes, or ``None`` when it does not exist.

    Raises:
        StateError: when it exists but cannot be read.
    """
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateError(f"cannot read {path}: {exc}") from exc
