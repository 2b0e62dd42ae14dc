"""Firmware catalogue, device firmware state, rollouts, waves, jobs and step reports.

Revision ID: 0005_firmware
Revises: 0003_manifests
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_firmware"
down_revision: str | None = "0003_manifests"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_UTC = sa.DateTime(timezone=True)
_CURRENT_JOB = sa.text("retired_at IS NULL")


def _fk(
    table: str, column: str, target: str, ondelete: str | None = "CASCADE"
) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        [column],
        [f"{target}.id"],
        name=op.f(f"fk_{table}_{column}_{target}"),
        ondelete=ondelete,
    )


def _packages() -> None:
    t = "firmware_packages"
    op.create_table(
        t,
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.Column("device_class_id", sa.String(length=36), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("sequence", sa.BigInteger(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("chunk_size", sa.Integer(), nullable=False),
        sa.Column("chunk_count", sa.Integer(), nullable=False),
        sa.Column("blob_key", sa.String(length=128), nullable=False),
        sa.Column("envelope", sa.LargeBinary(), nullable=False),
        sa.Column("manifest_digest", sa.String(length=64), nullable=False),
        sa.Column("release_notes", sa.Text(), nullable=False),
        sa.Column("required_product_id", sa.String(length=36), nullable=True),
        sa.Column("required_feature", sa.String(length=64), nullable=True),
        sa.Column("created_at", _UTC, nullable=False),
        sa.CheckConstraint(
            "required_feature IS NULL OR required_product_id IS NOT NULL",
            name=op.f("ck_firmware_packages_gate"),
        ),
        sa.CheckConstraint("sequence >= 1", name=op.f("ck_firmware_packages_sequence")),
        sa.CheckConstraint("size > 0", name=op.f("ck_firmware_packages_size")),
        _fk(t, "device_class_id", "device_classes"),
        _fk(t, "required_product_id", "products", None),
        _fk(t, "tenant_id", "tenants"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_firmware_packages")),
        sa.UniqueConstraint(
            "device_class_id",
            "sequence",
            name=op.f("uq_firmware_packages_device_class_id_sequence"),
        ),
        sa.UniqueConstraint(
            "device_class_id", "version", name=op.f("uq_firmware_packages_device_class_id_version")
        ),
    )
    op.create_index(
        op.f("ix_firmware_packages_tenant_id_device_class_id"), t, ["tenant_id", "device_class_id"]
    )


def _device_firmware() -> None:
    t = "device_firmware"
    op.create_table(
        t,
        sa.Column("device_id", sa.String(length=32), nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.Column("installed_seq", sa.BigInteger(), nullable=False),
        sa.Column("installed_version", sa.String(length=64), nullable=True),
        sa.Column("package_id", sa.String(length=36), nullable=True),
        sa.Column("updated_at", _UTC, nullable=False),
        _fk(t, "device_id", "devices"),
        _fk(t, "package_id", "firmware_packages", "SET NULL"),
        _fk(t, "tenant_id", "tenants"),
        sa.PrimaryKeyConstraint("device_id", name=op.f("pk_device_firmware")),
    )
    op.create_index(op.f("ix_device_firmware_tenant_id"), t, ["tenant_id"])


def _reports() -> None:
    t = "firmware_reports"
    op.create_table(
        t,
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.Column("device_id", sa.String(length=32), nullable=False),
        sa.Column("key", sa.String(length=256), nullable=False),
        sa.Column("job_id", sa.String(length=32), nullable=False),
        sa.Column("step", sa.String(length=16), nullable=False),
        sa.Column("at", sa.BigInteger(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("installed_seq", sa.BigInteger(), nullable=True),
        sa.Column("applied", sa.Boolean(), nullable=False),
        sa.Column("received_at", _UTC, nullable=False),
        _fk(t, "device_id", "devices"),
        _fk(t, "tenant_id", "tenants"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_firmware_reports")),
        sa.UniqueConstraint("device_id", "key", name=op.f("uq_firmware_reports_device_id_key")),
    )
    op.create_index(op.f("ix_firmware_reports_job_id"), t, ["job_id"])
    op.create_index(op.f("ix_firmware_reports_tenant_id"), t, ["tenant_id"])


def _rollouts() -> None:
    t = "firmware_rollouts"
    op.create_table(
        t,
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("package_id", sa.String(length=36), nullable=False),
        sa.Column("device_class_id", sa.String(length=36), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("state_reason", sa.Text(), nullable=True),
        sa.Column("target_filter", sa.JSON(), nullable=False),
        sa.Column("success_percent", sa.Integer(), nullable=False),
        sa.Column("failure_percent", sa.Integer(), nullable=False),
        sa.Column("failure_min_sample", sa.Integer(), nullable=False),
        sa.Column("failure_action", sa.String(length=8), nullable=False),
        sa.Column("device_timeout_seconds", sa.Integer(), nullable=False),
        sa.Column("windows", sa.JSON(), nullable=False),
        sa.Column("current_wave", sa.Integer(), nullable=False),
        sa.Column("target_count", sa.Integer(), nullable=False),
        sa.Column("skipped", sa.JSON(), nullable=False),
        sa.Column("base_failures", sa.Integer(), nullable=False),
        sa.Column("base_finished", sa.Integer(), nullable=False),
        sa.Column("created_at", _UTC, nullable=False),
        sa.Column("started_at", _UTC, nullable=True),
        sa.Column("finished_at", _UTC, nullable=True),
        sa.Column("updated_at", _UTC, nullable=False),
        sa.CheckConstraint(
            "failure_action IN ('pause', 'abort')", name=op.f("ck_firmware_rollouts_failure_action")
        ),
        sa.CheckConstraint(
            "state IN ('draft', 'running', 'paused', 'completed', 'aborted', 'cancelled')",
            name=op.f("ck_firmware_rollouts_state"),
        ),
        sa.CheckConstraint(
            "device_timeout_seconds >= 1", name=op.f("ck_firmware_rollouts_device_timeout")
        ),
        sa.CheckConstraint(
            "failure_min_sample >= 1", name=op.f("ck_firmware_rollouts_failure_min_sample")
        ),
        sa.CheckConstraint(
            "failure_percent BETWEEN 0 AND 100", name=op.f("ck_firmware_rollouts_failure_percent")
        ),
        sa.CheckConstraint(
            "success_percent BETWEEN 1 AND 100", name=op.f("ck_firmware_rollouts_success_percent")
        ),
        _fk(t, "device_class_id", "device_classes"),
        _fk(t, "package_id", "firmware_packages", None),
        _fk(t, "tenant_id", "tenants"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_firmware_rollouts")),
    )
    op.create_index(op.f("ix_firmware_rollouts_state"), t, ["state"])
    op.create_index(
        op.f("ix_firmware_rollouts_tenant_id_created_at"), t, ["tenant_id", "created_at"]
    )


def _waves() -> None:
    t = "firmware_rollout_waves"
    op.create_table(
        t,
        sa.Column("rollout_id", sa.String(length=36), nullable=False),
        sa.Column("number", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("percent", sa.Integer(), nullable=True),
        sa.Column("size", sa.Integer(), nullable=True),
        sa.Column("planned", sa.Integer(), nullable=False),
        sa.Column("started_at", _UTC, nullable=True),
        sa.Column("completed_at", _UTC, nullable=True),
        sa.CheckConstraint(
            "(percent IS NULL) <> (size IS NULL)",
            name=op.f("ck_firmware_rollout_waves_percent_or_size"),
        ),
        _fk(t, "rollout_id", "firmware_rollouts"),
        sa.PrimaryKeyConstraint("rollout_id", "number", name=op.f("pk_firmware_rollout_waves")),
    )


def _jobs() -> None:
    t = "firmware_jobs"
    states = (
        "'pending', 'offered', 'downloading', 'downloaded', 'verified', 'installing', "
        "'rebooting', 'confirmed', 'failed', 'reverted', 'timed_out', 'cancelled'"
    )
    op.create_table(
        t,
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("job_id", sa.String(length=32), nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.Column("rollout_id", sa.String(length=36), nullable=False),
        sa.Column("package_id", sa.String(length=36), nullable=False),
        sa.Column("device_id", sa.String(length=32), nullable=False),
        sa.Column("wave", sa.Integer(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("last_step", sa.String(length=16), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("created_at", _UTC, nullable=False),
        sa.Column("offered_at", _UTC, nullable=True),
        sa.Column("deadline_at", _UTC, nullable=True),
        sa.Column("finished_at", _UTC, nullable=True),
        sa.Column("retired_at", _UTC, nullable=True),
        sa.Column("updated_at", _UTC, nullable=False),
        sa.CheckConstraint(f"state IN ({states})", name=op.f("ck_firmware_jobs_state")),
        _fk(t, "device_id", "devices"),
        _fk(t, "package_id", "firmware_packages", None),
        _fk(t, "rollout_id", "firmware_rollouts"),
        _fk(t, "tenant_id", "tenants"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_firmware_jobs")),
        sa.UniqueConstraint("job_id", name=op.f("uq_firmware_jobs_job_id")),
    )
    op.create_index(op.f("ix_firmware_jobs_device_id_state"), t, ["device_id", "state"])
    op.create_index(
        op.f("ix_firmware_jobs_rollout_id_wave_state"), t, ["rollout_id", "wave", "state"]
    )
    op.create_index(op.f("ix_firmware_jobs_state_deadline_at"), t, ["state", "deadline_at"])
    op.create_index(
        "uq_firmware_jobs_current",
        t,
        ["rollout_id", "device_id"],
        unique=True,
        sqlite_where=_CURRENT_JOB,
        postgresql_where=_CURRENT_JOB,
    )


def upgrade() -> None:
    _packages()
    _device_firmware()
    _reports()
    _rollouts()
    _waves()
    _jobs()


def downgrade() -> None:
    for table in (
        "firmware_jobs",
        "firmware_rollout_waves",
        "firmware_rollouts",
        "firmware_reports",
        "device_firmware",
        "firmware_packages",
    ):
        op.drop_table(table)
