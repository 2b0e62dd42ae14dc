"""Telling a busy or unavailable database apart, and saying why without leaking data."""

from __future__ import annotations

from sqlalchemy.exc import OperationalError

_SQLITE_BUSY = {5, 6}  # SQLITE_BUSY, SQLITE_LOCKED (primary codes)
_PG_TRANSIENT = {
    "40001",  # serialization_failure
    "40P01",  # deadlock_detected
    "55P03",  # lock_not_available
    "57014",  # query_canceled (statement or lock timeout)
    "57P01",  # admin_shutdown
    "57P02",  # crash_shutdown
    "57P03",  # cannot_connect_now
}


def is_busy(exc: OperationalError) -> bool:
    """Whether ``exc`` is a lock timeout or a lost or refused connection: retry later.

    Anything else (no such table, disk full, a read-only database) is a fault
    to be reported loudly, not skipped.
    """
    if exc.connection_invalidated:
        return True
    code = getattr(exc.orig, "sqlite_errorcode", None)
    if isinstance(code, int):
        return (code & 0xFF) in _SQLITE_BUSY
    state = getattr(exc.orig, "sqlstate", None)
    if isinstance(state, str):
        return state in _PG_TRANSIENT or state.startswith("08")  # 08: connection exceptions
    return False


def busy_reason(exc: OperationalError) -> str:
    """The driver's own first line (e.g. ``database is locked``), at most 200 characters.

    SQLAlchemy's full message carries the statement and its parameters, which
    could hold credential hashes or other data that must not reach a log.
    """
    if exc.orig is None:
        return "unavailable"
    lines = str(exc.orig).splitlines() or ["unavailable"]
    return lines[0][:200]
