"""Rollout tables: rollouts, their waves, per-device jobs and step reports.

A job is one device's assignment to one package within a rollout. A retry of
a failed device retires its job (``retired_at``) and creates the next attempt
with a fresh job id, so at most one *current* job exists per device and
rollout (a partial unique index). Reports are stored once per device and
idempotency key, forever.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from hub.db.base import Base, UTCDateTime

ROLLOUT_STATES = ("draft", "running", "paused", "completed", "aborted", "cancelled")
JOB_STATES = (
    "pending",
    "offered",
    "downloading",
    "downloaded",
    "verified",
    "installing",
    "rebooting",
    "confirmed",
    "failed",
    "reverted",
    "timed_out",
    "cancelled",
)
FAILURE_ACTIONS = ("pause", "abort")


def _tenant_fk() -> ForeignKey:
    return ForeignKey("tenants.id", ondelete="CASCADE")


def _in(column: str, values: tuple[str, ...]) -> str:
    quoted = ", ".join(f"'{v}'" for v in values)
    return f"{column} IN ({quoted})"


class Rollout(Base):
    """A package rolled out to a filtered set of one class's devices, in waves."""

    __tablename__ = "firmware_rollouts"
    __table_args__ = (
        CheckConstraint(_in("state", ROLLOUT_STATES), name="state"),
        CheckConstraint(_in("failure_action", FAILURE_ACTIONS), name="failure_action"),
        CheckConstraint("success_percent BETWEEN 1 AND 100", name="success_percent"),
        CheckConstraint("failure_percent BETWEEN 0 AND 100", name="failure_percent"),
        CheckConstraint("failure_min_sample >= 1", name="failure_min_sample"),
        CheckConstraint("device_timeout_seconds >= 1", name="device_timeout"),
        Index(None, "tenant_id", "created_at"),
        Index(None, "state"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(_tenant_fk())
    name: Mapped[str] = mapped_column(String(200))
    package_id: Mapped[str] = mapped_column(ForeignKey("firmware_packages.id"))
    device_class_id: Mapped[str] = mapped_column(
        ForeignKey("device_classes.id", ondelete="CASCADE")
    )
    state: Mapped[str] = mapped_column(String(16), default="draft")
    state_reason: Mapped[str | None] = mapped_column(Text)
    target_filter: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    success_percent: Mapped[int] = mapped_column(Integer)
    failure_percent: Mapped[int] = mapped_column(Integer)
    failure_min_sample: Mapped[int] = mapped_column(Integer)
    failure_action: Mapped[str] = mapped_column(String(8))
    device_timeout_seconds: Mapped[int] = mapped_column(Integer)
    windows: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    current_wave: Mapped[int] = mapped_column(Integer, default=0)
    target_count: Mapped[int] = mapped_column(Integer, default=0)
    skipped: Mapped[dict[str, int]] = mapped_column(JSON, default=dict)
    # Failures and finished jobs already judged when the rollout was last resumed:
    # the threshold counts only what happens after an operator's decision.
    base_failures: Mapped[int] = mapped_column(Integer, default=0)
    base_finished: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class RolloutWave(Base):
    """One wave of a rollout: its requested share and the devices it got at start."""

    __tablename__ = "firmware_rollout_waves"
    __table_args__ = (
        CheckConstraint("(percent IS NULL) <> (size IS NULL)", name="percent_or_size"),
    )

    rollout_id: Mapped[str] = mapped_column(
        ForeignKey("firmware_rollouts.id", ondelete="CASCADE"), primary_key=True
    )
    number: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    percent: Mapped[int | None] = mapped_column(Integer)
    size: Mapped[int | None] = mapped_column(Integer)
    planned: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


_CURRENT_JOB = text("retired_at IS NULL")


class FirmwareJob(Base):
    """One device's assignment to a rollout's package (one attempt)."""

    __tablename__ = "firmware_jobs"
    __table_args__ = (
        CheckConstraint(_in("state", JOB_STATES), name="state"),
        Index(
            "uq_firmware_jobs_current",
            "rollout_id",
            "device_id",
            unique=True,
            sqlite_where=_CURRENT_JOB,
            postgresql_where=_CURRENT_JOB,
        ),
        # The engine scans for deadlines passed and for the jobs of a wave.
        Index(None, "state", "deadline_at"),
        Index(None, "rollout_id", "wave", "state"),
        Index(None, "device_id", "state"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(32), unique=True)
    tenant_id: Mapped[str] = mapped_column(_tenant_fk())
    rollout_id: Mapped[str] = mapped_column(ForeignKey("firmware_rollouts.id", ondelete="CASCADE"))
    package_id: Mapped[str] = mapped_column(ForeignKey("firmware_packages.id"))
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    wave: Mapped[int] = mapped_column(Integer)
    attempt: Mapped[int] = mapped_column(Integer, default=1)
    state: Mapped[str] = mapped_column(String(16), default="pending")
    last_step: Mapped[str | None] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    offered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    deadline_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    retired_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class FirmwareReport(Base):
    """A device's step report, stored once per (device, idempotency key)."""

    __tablename__ = "firmware_reports"
    __table_args__ = (
        UniqueConstraint("device_id", "key"),
        Index(None, "job_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(_tenant_fk(), index=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(256))
    job_id: Mapped[str] = mapped_column(String(32))
    step: Mapped[str] = mapped_column(String(16))
    at: Mapped[int] = mapped_column(BigInteger)
    reason: Mapped[str | None] = mapped_column(Text)
    installed_seq: Mapped[int | None] = mapped_column(BigInteger)
    applied: Mapped[bool] = mapped_column(Boolean, default=False)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime())
