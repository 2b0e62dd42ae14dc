"""The 0002 migration creates exactly the entitlement models' tables."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

import hub.entitlements.models  # noqa: F401  (registers the tables)
from hub.db.base import Base
from hub.db.engine import make_engine


def test_migrated_schema_matches_models(migrated_url: str) -> None:
    engine = make_engine(migrated_url)
    try:
        with engine.connect() as conn:
            diff = compare_metadata(
                MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata
            )
            tables = set(inspect(conn).get_table_names())
            indexes = {ix["name"] for ix in inspect(conn).get_indexes("activations")}
    finally:
        engine.dispose()
    assert diff == []
    assert {
        "customer_accounts",
        "features",
        "entitlements",
        "activations",
        "trial_uses",
        "seat_leases",
        "entitlement_events",
    } <= tables
    assert "uq_activations_open" in indexes
