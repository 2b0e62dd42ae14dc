"""Telling a busy or unavailable database apart, and saying why without leaking data."""

from __future__ import annotations

from sqlalchemy.exc import OperationalError


def busy_reason(exc: OperationalError) -> str:
    """The driver's own first line (e.g. ``database is locked``), at most 200 characters.

    SQLAlchemy's full message carries the statement and its parameters, which
    could hold credential hashes or other data that must not reach a log.
    """
    if exc.orig is None:
        return "unavailable"
    lines = str(exc.orig).splitlines() or ["unavailable"]
    return lines[0][:200]
