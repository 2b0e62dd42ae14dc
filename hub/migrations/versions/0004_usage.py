"""Usage ingestion: records, conflicts, quarantine, rejections, gaps, meters.

Revision ID: 0004_usage
Revises: 0003_manifests

Quantities are NUMERIC(24, 6) on PostgreSQL and integer micro-units (BIGINT)
on SQLite, whose NUMERIC would be a float (see hub.telemetry.models.Quantity).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_usage"
down_revision: str | None = "0003_manifests"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_UTC = sa.DateTime(timezone=True)
_QTY = sa.Numeric(precision=24, scale=6).with_variant(sa.BigInteger(), "sqlite")
_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _tenant_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["tenant_id"],
        ["tenants.id"],
        name=op.f(f"fk_{table}_tenant_id_tenants"),
        ondelete="CASCADE",
    )


def _key_columns() -> list[sa.Column[int] | sa.Column[str]]:
    return [
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("boot_epoch", sa.BigInteger(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
    ]


def _content_columns() -> list[sa.Column[object]]:
    return [
        sa.Column("meter", sa.String(length=64), nullable=False),
        sa.Column("quantity", _QTY, nullable=False),
        sa.Column("dimension", sa.String(length=64), nullable=True),
        sa.Column("recorded_at", _UTC, nullable=False),
        sa.Column("received_at", _UTC, nullable=False),
    ]


def _unique_key(table: str) -> sa.UniqueConstraint:
    return sa.UniqueConstraint(
        "device_id", "boot_epoch", "seq", name=op.f(f"uq_{table}_device_id_boot_epoch_seq")
    )


def upgrade() -> None:
    _records()
    _conflicts_quarantine_rejections()
    _sequences_gaps_totals()
    _meters()


def _records() -> None:
    op.create_table(
        "usage_records",
        *_key_columns(),
        *_content_columns(),
        sa.Column("account_id", sa.String(length=36), nullable=True),
        sa.Column("product_id", sa.String(length=36), nullable=True),
        sa.Column("entitlement_id", sa.String(length=36), nullable=True),
        sa.Column("over_cap", sa.Boolean(), nullable=False),
        _tenant_fk("usage_records"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_usage_records")),
        _unique_key("usage_records"),
    )
    op.create_index(op.f("ix_usage_records_received_at"), "usage_records", ["received_at"])
    op.create_index(
        op.f("ix_usage_records_tenant_id_account_id_meter_recorded_at"),
        "usage_records",
        ["tenant_id", "account_id", "meter", "recorded_at"],
    )
    op.create_index(
        op.f("ix_usage_records_tenant_id_device_id_recorded_at"),
        "usage_records",
        ["tenant_id", "device_id", "recorded_at"],
    )


def _conflicts_quarantine_rejections() -> None:
    op.create_table(
        "usage_conflicts",
        *_key_columns(),
        *_content_columns(),
        _tenant_fk("usage_conflicts"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_usage_conflicts")),
    )
    op.create_index(
        op.f("ix_usage_conflicts_device_id_boot_epoch_seq"),
        "usage_conflicts",
        ["device_id", "boot_epoch", "seq"],
    )
    op.create_index(
        op.f("ix_usage_conflicts_tenant_id_received_at"),
        "usage_conflicts",
        ["tenant_id", "received_at"],
    )
    op.create_table(
        "usage_quarantine",
        *_key_columns(),
        *_content_columns(),
        sa.Column("reason", sa.String(length=16), nullable=False),
        sa.CheckConstraint(
            "reason IN ('future', 'too_old')", name=op.f("ck_usage_quarantine_reason")
        ),
        _tenant_fk("usage_quarantine"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_usage_quarantine")),
        _unique_key("usage_quarantine"),
    )
    op.create_index(
        op.f("ix_usage_quarantine_tenant_id_received_at"),
        "usage_quarantine",
        ["tenant_id", "received_at"],
    )
    op.create_table(
        "usage_rejections",
        *_key_columns(),
        sa.Column("reason", sa.String(length=200), nullable=False),
        sa.Column("received_at", _UTC, nullable=False),
        _tenant_fk("usage_rejections"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_usage_rejections")),
        _unique_key("usage_rejections"),
    )
    op.create_index(
        op.f("ix_usage_rejections_tenant_id_received_at"),
        "usage_rejections",
        ["tenant_id", "received_at"],
    )


def _sequences_gaps_totals() -> None:
    op.create_table(
        "usage_sequences",
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("boot_epoch", sa.BigInteger(), nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.Column("high_seq", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", _UTC, nullable=False),
        _tenant_fk("usage_sequences"),
        sa.PrimaryKeyConstraint("device_id", "boot_epoch", name=op.f("pk_usage_sequences")),
    )
    op.create_index(op.f("ix_usage_sequences_tenant_id"), "usage_sequences", ["tenant_id"])
    op.create_table(
        "usage_gaps",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("boot_epoch", sa.BigInteger(), nullable=False),
        sa.Column("first_missing_seq", sa.BigInteger(), nullable=False),
        sa.Column("last_missing_seq", sa.BigInteger(), nullable=False),
        sa.Column("detected_at", _UTC, nullable=False),
        sa.Column("closed_at", _UTC, nullable=True),
        sa.CheckConstraint(
            "first_missing_seq <= last_missing_seq", name=op.f("ck_usage_gaps_range")
        ),
        _tenant_fk("usage_gaps"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_usage_gaps")),
    )
    op.create_index(
        op.f("ix_usage_gaps_device_id_boot_epoch_closed_at"),
        "usage_gaps",
        ["device_id", "boot_epoch", "closed_at"],
    )
    op.create_index(
        op.f("ix_usage_gaps_tenant_id_closed_at_detected_at"),
        "usage_gaps",
        ["tenant_id", "closed_at", "detected_at"],
    )
    op.create_table(
        "usage_period_totals",
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("meter", sa.String(length=64), nullable=False),
        sa.Column("period", sa.String(length=8), nullable=False),
        sa.Column("period_start", _UTC, nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.Column("quantity", _QTY, nullable=False),
        _tenant_fk("usage_period_totals"),
        sa.PrimaryKeyConstraint(
            "device_id", "meter", "period", "period_start", name=op.f("pk_usage_period_totals")
        ),
    )
    op.create_index(op.f("ix_usage_period_totals_tenant_id"), "usage_period_totals", ["tenant_id"])


def _meters() -> None:
    op.create_table(
        "meters",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("feature_key", sa.String(length=64), nullable=False),
        sa.Column("aggregation", sa.String(length=16), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("created_at", _UTC, nullable=False),
        sa.CheckConstraint(
            "aggregation IN ('sum', 'count', 'max', 'unique_count', 'latest')",
            name=op.f("ck_meters_aggregation"),
        ),
        _tenant_fk("meters"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_meters")),
        sa.UniqueConstraint("tenant_id", "name", name=op.f("uq_meters_tenant_id_name")),
    )


def downgrade() -> None:
    for table in (
        "meters",
        "usage_period_totals",
        "usage_gaps",
        "usage_sequences",
        "usage_rejections",
        "usage_quarantine",
        "usage_conflicts",
        "usage_records",
    ):
        op.drop_table(table)
