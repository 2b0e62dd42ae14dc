"""Alembic environment for the hub: online migrations with the hub's engine settings."""

from __future__ import annotations

from alembic import context
from sqlalchemy import pool, text
from sqlalchemy.engine import Connection

from hub.db.engine import make_engine
from hub.models import Base  # every table, registered

config = context.config
target_metadata = Base.metadata

# Any 64-bit constant unique to the hub: concurrent `upgrade` calls queue on it.
_PG_LOCK_KEY = 0x6875625F6D6967


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK_KEY})
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = config.attributes.get("url") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no database URL given to the migrations")
    engine = make_engine(url, poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            _run(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise RuntimeError("offline (SQL script) migrations are not supported")
run_migrations_online()
