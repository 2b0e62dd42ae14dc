"""Apply the hub's Alembic migrations from code (no ``alembic.ini`` needed).

:func:`upgrade` is safe at every start: it does nothing when the schema is
current, and on PostgreSQL concurrent starters serialise on an advisory lock.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from hub.db.engine import make_engine

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def alembic_config(url: str) -> Config:
    """An Alembic config pointing at the packaged migrations and ``url``."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # Stored as an attribute, not a main option: ConfigParser would mangle '%'.
    config.attributes["url"] = url
    return config


def upgrade(url: str, revision: str = "heads") -> None:
    """Bring the database at ``url`` up to ``revision`` (default: every head).

    Feature packages (telemetry, firmware) each branch from the core chain, so
    the schema may have several heads until a merge revision joins them.
    """
    command.upgrade(alembic_config(url), revision)


def current_revisions(url: str) -> frozenset[str]:
    """The revisions (one per branch head) the database at ``url`` is at; empty if unmanaged."""
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            return frozenset(MigrationContext.configure(connection).get_current_heads())
    finally:
        engine.dispose()


def head_revisions(url: str) -> frozenset[str]:
    """The heads of the packaged migrations: where :func:`upgrade` brings a database."""
    return frozenset(ScriptDirectory.from_config(alembic_config(url)).get_heads())
