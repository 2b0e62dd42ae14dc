"""The migrations produce exactly the models' schema, on every backend."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from hub.db.engine import make_engine, make_session_factory
from hub.db.migrate import current_revisions, head_revisions, upgrade
from hub.models import Base
from hub.registry.models import Tenant


def test_upgrade_matches_models_and_is_idempotent(database_url: str) -> None:
    upgrade(database_url)
    upgrade(database_url)  # a second start is a no-op
    heads = head_revisions(database_url)
    assert heads and current_revisions(database_url) == heads
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            diff = compare_metadata(context, Base.metadata)
            tables = set(inspect(conn).get_table_names())
    finally:
        engine.dispose()
    assert diff == []
    assert set(Base.metadata.tables) <= tables


def test_sqlite_pragmas(tmp_path: object) -> None:
    engine = make_engine(f"sqlite:///{tmp_path}/p.db")
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 5000
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
    finally:
        engine.dispose()


def test_utc_datetime_round_trips_aware(database_url: str) -> None:
    upgrade(database_url)
    engine = make_engine(database_url)
    factory = make_session_factory(engine)
    moment = datetime(2031, 5, 6, 7, 8, 9, 123456, tzinfo=timezone(timedelta(hours=2)))
    try:
        with factory() as s:
            s.add(Tenant(id="00000000-0000-0000-0000-0000000000aa", name="tz", created_at=moment))
            s.commit()
        with factory() as s:
            loaded = s.get_one(Tenant, "00000000-0000-0000-0000-0000000000aa")
            assert loaded.created_at == moment
            assert loaded.created_at.tzinfo == UTC
            with pytest.raises(Exception, match="naive"):
                s.add(Tenant(id="x", name="naive", created_at=datetime(2031, 1, 1)))
                s.flush()
    finally:
        engine.dispose()


def test_compare_detects_drift(database_url: str) -> None:
    """Negative control: the comparison does see a schema difference."""
    from sqlalchemy import Column, Integer, MetaData, Table

    upgrade(database_url)
    drifted = MetaData()
    for table in Base.metadata.tables.values():
        table.to_metadata(drifted)
    Table("not_migrated", drifted, Column("id", Integer, primary_key=True))
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), drifted)
    finally:
        engine.dispose()
    assert [d[0] for d in diff] == ["add_table"]
