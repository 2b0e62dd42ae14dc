"""Entitlement tables: customer accounts, features, entitlements, activations,
trial uses, floating-seat leases, entitlement history.

Generated from the models and hand-checked; tests/hub/db/test_migrations.py
asserts the upgraded schema equals the models' on SQLite and PostgreSQL. The
two partial unique indexes (one open activation per entitlement and device,
one unreleased seat per entitlement and device) use ``WHERE`` clauses that
both backends support.

Revision ID: 0002_entitlements
Revises: 0001_registry
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_entitlements"
down_revision: str | None = "0001_registry"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_UTC = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "customer_accounts",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("external_ref", sa.String(length=200), nullable=True),
        sa.Column("created_at", _UTC, nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_customer_accounts_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_customer_accounts")),
        sa.UniqueConstraint("tenant_id", "name", name=op.f("uq_customer_accounts_tenant_id_name")),
    )
    op.create_table(
        "entitlement_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.Column("account_id", sa.String(length=36), nullable=False),
        sa.Column("entitlement_id", sa.String(length=36), nullable=True),
        sa.Column("device_id", sa.String(length=32), nullable=True),
        sa.Column("at", _UTC, nullable=False),
        sa.Column("actor", sa.String(length=100), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=True),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_entitlement_events_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_entitlement_events")),
    )
    op.create_index(
        op.f("ix_entitlement_events_tenant_id_account_id_at"),
        "entitlement_events",
        ["tenant_id", "account_id", "at"],
        unique=False,
    )
    op.create_index(
        op.f("ix_entitlement_events_tenant_id_device_id_at"),
        "entitlement_events",
        ["tenant_id", "device_id", "at"],
        unique=False,
    )
    op.create_index(
        op.f("ix_entitlement_events_tenant_id_entitlement_id_at"),
        "entitlement_events",
        ["tenant_id", "entitlement_id", "at"],
        unique=False,
    )
    op.create_table(
        "entitlements",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.Column("account_id", sa.String(length=36), nullable=False),
        sa.Column("product_id", sa.String(length=36), nullable=False),
        sa.Column("license_model", sa.String(length=16), nullable=False),
        sa.Column("quantity", sa.Integer(), nullable=False),
        sa.Column("starts_at", _UTC, nullable=False),
        sa.Column("ends_at", _UTC, nullable=True),
        sa.Column("grace_seconds", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("feature_overrides", sa.JSON(), nullable=False),
        sa.Column("created_at", _UTC, nullable=False),
        sa.Column("updated_at", _UTC, nullable=False),
        sa.CheckConstraint(
            "license_model IN ('perpetual', 'subscription', 'trial', 'node_locked', "
            "'floating', 'metered')",
            name=op.f("ck_entitlements_license_model"),
        ),
        sa.CheckConstraint(
            "status IN ('active', 'suspended', 'revoked', 'expired')",
            name=op.f("ck_entitlements_status"),
        ),
        sa.CheckConstraint(
            "ends_at IS NULL OR ends_at > starts_at", name=op.f("ck_entitlements_term")
        ),
        sa.CheckConstraint("grace_seconds >= 0", name=op.f("ck_entitlements_grace_seconds")),
        sa.CheckConstraint("quantity >= 1", name=op.f("ck_entitlements_quantity")),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["customer_accounts.id"],
            name=op.f("fk_entitlements_account_id_customer_accounts"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["product_id"],
            ["products.id"],
            name=op.f("fk_entitlements_product_id_products"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_entitlements_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_entitlements")),
    )
    op.create_index(
        op.f("ix_entitlements_status_ends_at"), "entitlements", ["status", "ends_at"], unique=False
    )
    op.create_index(
        op.f("ix_entitlements_tenant_id_account_id"),
        "entitlements",
        ["tenant_id", "account_id"],
        unique=False,
    )
    op.create_index(
        op.f("ix_entitlements_tenant_id_product_id"),
        "entitlements",
        ["tenant_id", "product_id"],
        unique=False,
    )
    op.create_table(
        "features",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.Column("product_id", sa.String(length=36), nullable=False),
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("default_limit", sa.Integer(), nullable=True),
        sa.Column("cap_per_period", sa.Integer(), nullable=True),
        sa.Column("period", sa.String(length=8), nullable=True),
        sa.Column("overage", sa.String(length=8), nullable=True),
        sa.Column("created_at", _UTC, nullable=False),
        sa.CheckConstraint("kind IN ('flag', 'limit', 'metered')", name=op.f("ck_features_kind")),
        sa.CheckConstraint(
            "overage IS NULL OR overage IN ('block', 'allow', 'flag')",
            name=op.f("ck_features_overage"),
        ),
        sa.CheckConstraint(
            "period IS NULL OR period IN ('day', 'month')", name=op.f("ck_features_period")
        ),
        sa.ForeignKeyConstraint(
            ["product_id"],
            ["products.id"],
            name=op.f("fk_features_product_id_products"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_features_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_features")),
        sa.UniqueConstraint("product_id", "key", name=op.f("uq_features_product_id_key")),
    )
    op.create_index(
        op.f("ix_features_tenant_id_product_id"),
        "features",
        ["tenant_id", "product_id"],
        unique=False,
    )
    op.create_table(
        "activations",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.Column("entitlement_id", sa.String(length=36), nullable=False),
        sa.Column("device_id", sa.String(length=32), nullable=False),
        sa.Column("activated_at", _UTC, nullable=False),
        sa.Column("deactivated_at", _UTC, nullable=True),
        sa.Column("temporary_until", _UTC, nullable=True),
        sa.ForeignKeyConstraint(
            ["device_id"],
            ["devices.id"],
            name=op.f("fk_activations_device_id_devices"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["entitlement_id"],
            ["entitlements.id"],
            name=op.f("fk_activations_entitlement_id_entitlements"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_activations_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_activations")),
    )
    op.create_index(
        op.f("ix_activations_device_id_deactivated_at"),
        "activations",
        ["device_id", "deactivated_at"],
        unique=False,
    )
    op.create_index(
        op.f("ix_activations_tenant_id_entitlement_id"),
        "activations",
        ["tenant_id", "entitlement_id"],
        unique=False,
    )
    op.create_index(
        "uq_activations_open",
        "activations",
        ["entitlement_id", "device_id"],
        unique=True,
        sqlite_where=sa.text("deactivated_at IS NULL"),
        postgresql_where=sa.text("deactivated_at IS NULL"),
    )
    op.create_table(
        "seat_leases",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.Column("entitlement_id", sa.String(length=36), nullable=False),
        sa.Column("device_id", sa.String(length=32), nullable=False),
        sa.Column("acquired_at", _UTC, nullable=False),
        sa.Column("heartbeat_at", _UTC, nullable=False),
        sa.Column("released_at", _UTC, nullable=True),
        sa.Column("release_reason", sa.String(length=32), nullable=True),
        sa.ForeignKeyConstraint(
            ["device_id"],
            ["devices.id"],
            name=op.f("fk_seat_leases_device_id_devices"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["entitlement_id"],
            ["entitlements.id"],
            name=op.f("fk_seat_leases_entitlement_id_entitlements"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_seat_leases_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_seat_leases")),
    )
    op.create_index(
        op.f("ix_seat_leases_device_id_released_at"),
        "seat_leases",
        ["device_id", "released_at"],
        unique=False,
    )
    op.create_index(
        op.f("ix_seat_leases_released_at_heartbeat_at"),
        "seat_leases",
        ["released_at", "heartbeat_at"],
        unique=False,
    )
    op.create_index(
        "uq_seat_leases_open",
        "seat_leases",
        ["entitlement_id", "device_id"],
        unique=True,
        sqlite_where=sa.text("released_at IS NULL"),
        postgresql_where=sa.text("released_at IS NULL"),
    )
    op.create_table(
        "trial_uses",
        sa.Column("device_id", sa.String(length=32), nullable=False),
        sa.Column("product_id", sa.String(length=36), nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.Column("entitlement_id", sa.String(length=36), nullable=False),
        sa.Column("used_at", _UTC, nullable=False),
        sa.ForeignKeyConstraint(
            ["device_id"],
            ["devices.id"],
            name=op.f("fk_trial_uses_device_id_devices"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["entitlement_id"],
            ["entitlements.id"],
            name=op.f("fk_trial_uses_entitlement_id_entitlements"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["product_id"],
            ["products.id"],
            name=op.f("fk_trial_uses_product_id_products"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_trial_uses_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("device_id", "product_id", name=op.f("pk_trial_uses")),
    )
    op.create_index(op.f("ix_trial_uses_tenant_id"), "trial_uses", ["tenant_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_trial_uses_tenant_id"), table_name="trial_uses")
    op.drop_table("trial_uses")
    op.drop_index(
        "uq_seat_leases_open",
        table_name="seat_leases",
        sqlite_where=sa.text("released_at IS NULL"),
        postgresql_where=sa.text("released_at IS NULL"),
    )
    op.drop_index(op.f("ix_seat_leases_released_at_heartbeat_at"), table_name="seat_leases")
    op.drop_index(op.f("ix_seat_leases_device_id_released_at"), table_name="seat_leases")
    op.drop_table("seat_leases")
    op.drop_index(
        "uq_activations_open",
        table_name="activations",
        sqlite_where=sa.text("deactivated_at IS NULL"),
        postgresql_where=sa.text("deactivated_at IS NULL"),
    )
    op.drop_index(op.f("ix_activations_tenant_id_entitlement_id"), table_name="activations")
    op.drop_index(op.f("ix_activations_device_id_deactivated_at"), table_name="activations")
    op.drop_table("activations")
    op.drop_index(op.f("ix_features_tenant_id_product_id"), table_name="features")
    op.drop_table("features")
    op.drop_index(op.f("ix_entitlements_tenant_id_product_id"), table_name="entitlements")
    op.drop_index(op.f("ix_entitlements_tenant_id_account_id"), table_name="entitlements")
    op.drop_index(op.f("ix_entitlements_status_ends_at"), table_name="entitlements")
    op.drop_table("entitlements")
    op.drop_index(
        op.f("ix_entitlement_events_tenant_id_entitlement_id_at"), table_name="entitlement_events"
    )
    op.drop_index(
        op.f("ix_entitlement_events_tenant_id_device_id_at"), table_name="entitlement_events"
    )
    op.drop_index(
        op.f("ix_entitlement_events_tenant_id_account_id_at"), table_name="entitlement_events"
    )
    op.drop_table("entitlement_events")
    op.drop_table("customer_accounts")
