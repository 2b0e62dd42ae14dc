"""Per-device feature manifests and their delivery state.

Revision ID: 0003_manifests
Revises: 0002_entitlements
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_manifests"
down_revision: str | None = "0002_entitlements"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_UTC = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "device_manifests",
        sa.Column("device_id", sa.String(length=32), nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("issued_at", _UTC, nullable=False),
        sa.Column("not_after", _UTC, nullable=False),
        sa.Column("features_hash", sa.String(length=64), nullable=False),
        sa.Column("kid", sa.String(length=64), nullable=False),
        sa.Column("acknowledged_kid", sa.String(length=64), nullable=True),
        sa.Column("acknowledged_signed", sa.LargeBinary(), nullable=True),
        sa.Column("signed", sa.LargeBinary(), nullable=False),
        sa.Column("delivery_state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("delivered_at", _UTC, nullable=True),
        sa.Column("acknowledged_at", _UTC, nullable=True),
        sa.Column("failure", sa.Text(), nullable=True),
        sa.Column("updated_at", _UTC, nullable=False),
        sa.ForeignKeyConstraint(
            ["device_id"],
            ["devices.id"],
            name=op.f("fk_device_manifests_device_id_devices"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_device_manifests_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("device_id", name=op.f("pk_device_manifests")),
    )
    op.create_index(
        op.f("ix_device_manifests_delivery_state_updated_at"),
        "device_manifests",
        ["delivery_state", "updated_at"],
    )
    op.create_index(op.f("ix_device_manifests_not_after"), "device_manifests", ["not_after"])
    op.create_index(op.f("ix_device_manifests_tenant_id"), "device_manifests", ["tenant_id"])


def downgrade() -> None:
    op.drop_table("device_manifests")
