"""Registry and audit tables: tenants, API keys, products, device classes,
devices, claim batches, device credentials, claim nonces, audit events.

Hand-checked against the models; tests/hub/db/test_migrations.py asserts that
upgrading an empty database gives exactly the models' schema on SQLite and
PostgreSQL. Timestamps are plain ``DateTime(timezone=True)`` here: the model's
``UTCDateTime`` decorator changes only Python-side conversion, not storage.

Revision ID: 0001_registry
Revises:
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001_registry"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_UTC = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "tenants",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("created_at", _UTC, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tenants")),
        sa.UniqueConstraint("name", name=op.f("uq_tenants_name")),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("secret_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", _UTC, nullable=False),
        sa.Column("revoked_at", _UTC, nullable=True),
        sa.Column("last_used_at", _UTC, nullable=True),
        sa.CheckConstraint(
            "role IN ('admin', 'operator', 'viewer')", name=op.f("ck_api_keys_role")
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_api_keys_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
    )
    op.create_index(op.f("ix_api_keys_tenant_id"), "api_keys", ["tenant_id"], unique=False)
    op.create_table(
        "audit_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=True),
        sa.Column("at", _UTC, nullable=False),
        sa.Column("actor", sa.String(length=100), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("target_type", sa.String(length=32), nullable=False),
        sa.Column("target_id", sa.String(length=100), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=True),
        sa.CheckConstraint(
            "outcome IN ('ok', 'refused', 'failed')", name=op.f("ck_audit_events_outcome")
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_audit_events_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_events")),
    )
    op.create_index(
        op.f("ix_audit_events_tenant_id_action"),
        "audit_events",
        ["tenant_id", "action"],
        unique=False,
    )
    op.create_index(
        op.f("ix_audit_events_tenant_id_at"), "audit_events", ["tenant_id", "at"], unique=False
    )
    op.create_index(
        op.f("ix_audit_events_tenant_id_target_type_target_id"),
        "audit_events",
        ["tenant_id", "target_type", "target_id"],
        unique=False,
    )
    op.create_table(
        "claim_batches",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("expires_at", _UTC, nullable=False),
        sa.Column("created_at", _UTC, nullable=False),
        sa.Column("revoked_at", _UTC, nullable=True),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_claim_batches_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_claim_batches")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_claim_batches_token_hash")),
    )
    op.create_index(
        op.f("ix_claim_batches_tenant_id"), "claim_batches", ["tenant_id"], unique=False
    )
    op.create_table(
        "device_classes",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("vendor_id", sa.String(length=36), nullable=False),
        sa.Column("class_id", sa.String(length=36), nullable=False),
        sa.Column("created_at", _UTC, nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_device_classes_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_device_classes")),
        sa.UniqueConstraint(
            "tenant_id",
            "vendor_id",
            "class_id",
            name=op.f("uq_device_classes_tenant_id_vendor_id_class_id"),
        ),
    )
    op.create_table(
        "products",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.Column("sku", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("created_at", _UTC, nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_products_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_products")),
        sa.UniqueConstraint("tenant_id", "sku", name=op.f("uq_products_tenant_id_sku")),
    )
    op.create_table(
        "devices",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.Column("serial", sa.String(length=64), nullable=False),
        sa.Column("device_class_id", sa.String(length=36), nullable=False),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("public_key", sa.LargeBinary(), nullable=True),
        sa.Column("public_key_fingerprint", sa.String(length=64), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("claimed_at", _UTC, nullable=True),
        sa.Column("created_at", _UTC, nullable=False),
        sa.Column("online", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("last_seen_at", _UTC, nullable=True),
        sa.Column("last_connect_at", _UTC, nullable=True),
        sa.CheckConstraint(
            "status IN ('registered', 'claimed', 'disabled')", name=op.f("ck_devices_status")
        ),
        sa.ForeignKeyConstraint(
            ["device_class_id"],
            ["device_classes.id"],
            name=op.f("fk_devices_device_class_id_device_classes"),
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_devices_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_devices")),
        sa.UniqueConstraint(
            "public_key_fingerprint", name=op.f("uq_devices_public_key_fingerprint")
        ),
        sa.UniqueConstraint("tenant_id", "serial", name=op.f("uq_devices_tenant_id_serial")),
    )
    op.create_index(
        op.f("ix_devices_online_last_seen_at"), "devices", ["online", "last_seen_at"], unique=False
    )
    op.create_index(
        op.f("ix_devices_tenant_id_device_class_id"),
        "devices",
        ["tenant_id", "device_class_id"],
        unique=False,
    )
    op.create_index(
        op.f("ix_devices_tenant_id_status"), "devices", ["tenant_id", "status"], unique=False
    )
    op.create_table(
        "claim_batch_devices",
        sa.Column("batch_id", sa.String(length=32), nullable=False),
        sa.Column("device_id", sa.String(length=32), nullable=False),
        sa.ForeignKeyConstraint(
            ["batch_id"],
            ["claim_batches.id"],
            name=op.f("fk_claim_batch_devices_batch_id_claim_batches"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["device_id"],
            ["devices.id"],
            name=op.f("fk_claim_batch_devices_device_id_devices"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("batch_id", "device_id", name=op.f("pk_claim_batch_devices")),
    )
    op.create_index(
        op.f("ix_claim_batch_devices_device_id"), "claim_batch_devices", ["device_id"], unique=False
    )
    op.create_table(
        "claim_nonces",
        sa.Column("nonce", sa.String(length=128), nullable=False),
        sa.Column("device_id", sa.String(length=32), nullable=False),
        sa.Column("seen_at", _UTC, nullable=False),
        sa.ForeignKeyConstraint(
            ["device_id"],
            ["devices.id"],
            name=op.f("fk_claim_nonces_device_id_devices"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("nonce", name=op.f("pk_claim_nonces")),
    )
    op.create_index(op.f("ix_claim_nonces_device_id"), "claim_nonces", ["device_id"], unique=False)
    op.create_index(op.f("ix_claim_nonces_seen_at"), "claim_nonces", ["seen_at"], unique=False)
    op.create_table(
        "device_credentials",
        sa.Column("device_id", sa.String(length=32), nullable=False),
        sa.Column("username", sa.String(length=64), nullable=False),
        sa.Column("password_hash", sa.String(length=200), nullable=False),
        sa.Column("created_at", _UTC, nullable=False),
        sa.ForeignKeyConstraint(
            ["device_id"],
            ["devices.id"],
            name=op.f("fk_device_credentials_device_id_devices"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("device_id", name=op.f("pk_device_credentials")),
        sa.UniqueConstraint("username", name=op.f("uq_device_credentials_username")),
    )


def downgrade() -> None:
    op.drop_table("device_credentials")
    op.drop_index(op.f("ix_claim_nonces_seen_at"), table_name="claim_nonces")
    op.drop_index(op.f("ix_claim_nonces_device_id"), table_name="claim_nonces")
    op.drop_table("claim_nonces")
    op.drop_index(op.f("ix_claim_batch_devices_device_id"), table_name="claim_batch_devices")
    op.drop_table("claim_batch_devices")
    op.drop_index(op.f("ix_devices_tenant_id_status"), table_name="devices")
    op.drop_index(op.f("ix_devices_tenant_id_device_class_id"), table_name="devices")
    op.drop_index(op.f("ix_devices_online_last_seen_at"), table_name="devices")
    op.drop_table("devices")
    op.drop_table("products")
    op.drop_table("device_classes")
    op.drop_index(op.f("ix_claim_batches_tenant_id"), table_name="claim_batches")
    op.drop_table("claim_batches")
    op.drop_index(
        op.f("ix_audit_events_tenant_id_target_type_target_id"), table_name="audit_events"
    )
    op.drop_index(op.f("ix_audit_events_tenant_id_at"), table_name="audit_events")
    op.drop_index(op.f("ix_audit_events_tenant_id_action"), table_name="audit_events")
    op.drop_table("audit_events")
    op.drop_index(op.f("ix_api_keys_tenant_id"), table_name="api_keys")
    op.drop_table("api_keys")
    op.drop_table("tenants")
