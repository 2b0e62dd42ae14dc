"""Read models of rollouts: progress with counts per wave, per-device jobs."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from hub.firmware.models import FirmwarePackage
from hub.rollouts import service
from hub.rollouts.models import FirmwareJob, Rollout
from hub.rollouts.schemas import (
    JobPublic,
    RolloutPublic,
    TargetFilter,
    WavePublic,
    WindowIn,
)


def rollout_public(session: Session, rollout: Rollout) -> RolloutPublic:
    """The rollout with job counts by state, overall and per wave."""
    package = session.get_one(FirmwarePackage, rollout.package_id)
    counts = service.state_counts(session, rollout.id)
    overall: dict[str, int] = {}
    for by_state in counts.values():
        for state, count in by_state.items():
            overall[state] = overall.get(state, 0) + count
    waves = [
        WavePublic(
            number=wave.number,
            percent=wave.percent,
            size=wave.size,
            planned=wave.planned,
            started_at=wave.started_at,
            completed_at=wave.completed_at,
            counts=dict(sorted(counts.get(wave.number, {}).items())),
        )
        for wave in service.waves_of(session, rollout.id)
    ]
    return RolloutPublic(
        id=rollout.id,
        name=rollout.name,
        package_id=rollout.package_id,
        package_version=package.version,
        device_class_id=rollout.device_class_id,
        state=rollout.state,
        state_reason=rollout.state_reason,
        filter=TargetFilter.model_validate(rollout.target_filter),
        success_percent=rollout.success_percent,
        failure_percent=rollout.failure_percent,
        failure_min_sample=rollout.failure_min_sample,
        failure_action=rollout.failure_action,
        device_timeout_seconds=rollout.device_timeout_seconds,
        maintenance_windows=[WindowIn.model_validate(w) for w in rollout.windows],
        current_wave=rollout.current_wave,
        target_count=rollout.target_count,
        skipped=dict(rollout.skipped or {}),
        counts=dict(sorted(overall.items())),
        waves=waves,
        created_at=rollout.created_at,
        started_at=rollout.started_at,
        finished_at=rollout.finished_at,
        updated_at=rollout.updated_at,
    )


def list_rollouts(
    session: Session,
    tenant_id: str,
    *,
    state: str | None,
    package_id: str | None,
    limit: int,
    offset: int,
) -> tuple[list[Rollout], int]:
    """A page of the tenant's rollouts, newest first."""
    query = select(Rollout).where(Rollout.tenant_id == tenant_id)
    if state is not None:
        query = query.where(Rollout.state == state)
    if package_id is not None:
        query = query.where(Rollout.package_id == package_id)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = session.scalars(
        query.order_by(Rollout.created_at.desc(), Rollout.id).limit(limit).offset(offset)
    )
    return list(rows), total


def list_jobs(
    session: Session,
    rollout: Rollout,
    *,
    state: str | None,
    wave: int | None,
    include_retired: bool,
    limit: int,
    offset: int,
) -> tuple[list[JobPublic], int]:
    """A page of the rollout's per-device jobs (current attempts unless asked otherwise)."""
    query = select(FirmwareJob).where(FirmwareJob.rollout_id == rollout.id)
    if not include_retired:
        query = query.where(FirmwareJob.retired_at.is_(None))
    if state is not None:
        query = query.where(FirmwareJob.state == state)
    if wave is not None:
        query = query.where(FirmwareJob.wave == wave)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = session.scalars(
        query.order_by(FirmwareJob.wave, FirmwareJob.device_id, FirmwareJob.attempt)
        .limit(limit)
        .offset(offset)
    )
    return [JobPublic.model_validate(job) for job in rows], total
