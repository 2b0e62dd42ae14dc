"""Migration 0007_usage_ingest on a database that already holds usage, on every backend."""

from __future__ import annotations

from datetime import UTC, datetime

from alembic import command
from sqlalchemy import inspect, text

from hub.db.engine import make_engine
from hub.db.migrate import alembic_config, upgrade

T0 = datetime(2030, 3, 1, tzinfo=UTC)
DEVICE_INDEX = "ix_usage_records_tenant_id_device_id_recorded_at"


def _usage_indexes(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return {str(ix["name"]) for ix in inspect(conn).get_indexes("usage_records")}
    finally:
        engine.dispose()


def _rows(url: str) -> list[tuple[object, ...]]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return [
                tuple(row)
                for row in conn.execute(
                    text("SELECT device_id, boot_epoch, seq, meter FROM usage_records ORDER BY seq")
                )
            ]
    finally:
        engine.dispose()


def test_0007_drops_the_device_index_and_keeps_every_record(database_url: str) -> None:
    upgrade(database_url, "0006_billing")
    assert DEVICE_INDEX in _usage_indexes(database_url)
    engine = make_engine(database_url)
    try:
        with engine.begin() as conn:
            conn.execute(
                text("INSERT INTO tenants (id, name, created_at) VALUES ('t1', 'T', :at)"),
                {"at": T0},
            )
            conn.execute(
                text(
                    "INSERT INTO usage_records (tenant_id, device_id, boot_epoch, seq, meter,"
                    " quantity, recorded_at, received_at, over_cap)"
                    " VALUES ('t1', 'dev-a', 1, :seq, 'api.calls', 5, :at, :at, false)"
                ),
                [{"seq": seq, "at": T0} for seq in (1, 2, 3)],
            )
    finally:
        engine.dispose()
    before = _rows(database_url)
    upgrade(database_url)
    indexes = _usage_indexes(database_url)
    assert DEVICE_INDEX not in indexes
    assert "ix_usage_records_tenant_id_account_id_meter_recorded_at" in indexes
    assert _rows(database_url) == before == [("dev-a", 1, seq, "api.calls") for seq in (1, 2, 3)]
    command.downgrade(alembic_config(database_url), "0007_usage_ingest-1")
    assert DEVICE_INDEX in _usage_indexes(database_url)
    assert _rows(database_url) == before
