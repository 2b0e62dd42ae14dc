"""Engine and session factory construction.

SQLite is tuned for a small always-on service: WAL so readers never block the
writer, enforced foreign keys, transactions that take the write lock when they
begin (``BEGIN IMMEDIATE``) and wait for it up to a busy timeout instead of
failing with ``database is locked``, and ``synchronous=NORMAL`` (durable across process crashes,
which is what WAL needs). The pysqlite driver's own transaction handling is
switched off so that SQLAlchemy's BEGIN and SAVEPOINT behave as documented.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.orm import Session, sessionmaker

SQLITE_BUSY_TIMEOUT_MS = 5000


def _tune_sqlite(engine: Engine) -> None:
    """Install the connect/begin hooks every SQLite connection needs."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Driver-level autocommit: pysqlite otherwise issues its own BEGINs
        # lazily, which breaks SAVEPOINT (used for per-row imports).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA synchronous=NORMAL")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        # IMMEDIATE takes the write lock up front (waiting up to busy_timeout).
        # A deferred BEGIN that reads, then writes after another connection
        # committed, fails at once with "database is locked": busy_timeout does
        # not apply to that lock upgrade. WAL readers outside transactions are
        # unaffected.
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def make_engine(url: str, **kwargs: Any) -> Engine:
    """Create an engine for ``url`` with the hub's per-backend settings.

    Args:
        url: SQLAlchemy URL, e.g. ``sqlite:///hub.db`` or
            ``postgresql+psycopg://user@host/db``.
        **kwargs: passed to :func:`sqlalchemy.create_engine` (e.g. ``poolclass``).

    Returns:
        The engine; SQLite engines carry the pragmas described in this module.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine = create_engine(parsed, **kwargs)
        _tune_sqlite(engine)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(parsed, **kwargs)


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Build the session factory used by requests, jobs and the MQTT adapter.

    Objects stay usable after commit (``expire_on_commit=False``) so a service
    result can be serialised after its transaction ended.
    """
    return sessionmaker(bind=engine, expire_on_commit=False)
