"""``/api/v1/firmware/rollouts``: create, start, pause, resume, cancel, retry, progress, devices."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, status

from hub.api.deps import NowDep, OperatorDep, Page, PaginationDep, SessionDep, ViewerDep
from hub.firmware.deps import KickDep, PublishDep
from hub.rollouts import service, views
from hub.rollouts.models import JOB_STATES, ROLLOUT_STATES
from hub.rollouts.schemas import (
    JobPublic,
    RetryResult,
    RolloutAction,
    RolloutCreate,
    RolloutPublic,
)

router = APIRouter(prefix="/firmware/rollouts", tags=["firmware rollouts"])

StateQuery = Annotated[str | None, Query(pattern="^(" + "|".join(ROLLOUT_STATES) + ")$")]
JobStateQuery = Annotated[str | None, Query(pattern="^(" + "|".join(JOB_STATES) + ")$")]


@router.post("", status_code=status.HTTP_201_CREATED)
def create_rollout(
    body: RolloutCreate, session: SessionDep, caller: OperatorDep, now: NowDep
) -> RolloutPublic:
    """Create a draft rollout of a package (nothing is offered until it starts)."""
    rollout = service.create_rollout(
        session, tenant_id=caller.tenant_id, actor=caller.actor, now=now, data=body
    )
    session.flush()
    return views.rollout_public(session, rollout)


@router.get("")
def list_rollouts(
    session: SessionDep,
    caller: ViewerDep,
    page: PaginationDep,
    state: StateQuery = None,
    package_id: Annotated[str | None, Query(max_length=36)] = None,
) -> Page[RolloutPublic]:
    """The tenant's rollouts, newest first, with their progress."""
    items, total = views.list_rollouts(
        session,
        caller.tenant_id,
        state=state,
        package_id=package_id,
        limit=page.limit,
        offset=page.offset,
    )
    return Page[RolloutPublic](
        items=[views.rollout_public(session, r) for r in items],
        total=total,
        limit=page.limit,
        offset=page.offset,
    )


@router.get("/{rollout_id}")
def get_rollout(rollout_id: str, session: SessionDep, caller: ViewerDep) -> RolloutPublic:
    """A rollout's state and progress: counts by state, overall and per wave."""
    return views.rollout_public(session, service.get_rollout(session, caller.tenant_id, rollout_id))


@router.get("/{rollout_id}/devices")
def rollout_devices(
    rollout_id: str,
    session: SessionDep,
    caller: ViewerDep,
    page: PaginationDep,
    state: JobStateQuery = None,
    wave: Annotated[int | None, Query(ge=0)] = None,
    include_retired: bool = False,
) -> Page[JobPublic]:
    """Per-device jobs of a rollout (current attempts; ``include_retired`` adds earlier ones)."""
    rollout = service.get_rollout(session, caller.tenant_id, rollout_id)
    items, total = views.list_jobs(
        session,
        rollout,
        state=state,
        wave=wave,
        include_retired=include_retired,
        limit=page.limit,
        offset=page.offset,
    )
    return Page[JobPublic](items=items, total=total, limit=page.limit, offset=page.offset)


@router.post("/{rollout_id}/start")
def start_rollout(
    rollout_id: str, session: SessionDep, caller: OperatorDep, now: NowDep, kick: KickDep
) -> RolloutPublic:
    """Select targets, plan waves, create jobs; the first wave's offers follow at once."""
    rollout = service.start_rollout(
        session, tenant_id=caller.tenant_id, actor=caller.actor, now=now, rollout_id=rollout_id
    )
    kick(rollout.id)
    return views.rollout_public(session, rollout)


@router.post("/{rollout_id}/pause")
def pause_rollout(
    rollout_id: str,
    session: SessionDep,
    caller: OperatorDep,
    now: NowDep,
    body: RolloutAction | None = None,
) -> RolloutPublic:
    """Stop offering; devices already working finish (or time out)."""
    rollout = service.pause_rollout(
        session,
        tenant_id=caller.tenant_id,
        actor=caller.actor,
        now=now,
        rollout_id=rollout_id,
        reason=body.reason if body else None,
    )
    return views.rollout_public(session, rollout)


@router.post("/{rollout_id}/resume")
def resume_rollout(
    rollout_id: str, session: SessionDep, caller: OperatorDep, now: NowDep, kick: KickDep
) -> RolloutPublic:
    """Resume a paused rollout (the failure threshold counts from here)."""
    rollout = service.resume_rollout(
        session, tenant_id=caller.tenant_id, actor=caller.actor, now=now, rollout_id=rollout_id
    )
    kick(rollout.id)
    return views.rollout_public(session, rollout)


@router.post("/{rollout_id}/cancel")
def cancel_rollout(
    rollout_id: str,
    session: SessionDep,
    caller: OperatorDep,
    now: NowDep,
    publish: PublishDep,
    body: RolloutAction | None = None,
) -> RolloutPublic:
    """Cancel: pending jobs dropped, offered ones withdrawn with ``fw_cancel``."""
    rollout, out = service.cancel_rollout(
        session,
        tenant_id=caller.tenant_id,
        actor=caller.actor,
        now=now,
        rollout_id=rollout_id,
        reason=body.reason if body else None,
    )
    publish(out)
    return views.rollout_public(session, rollout)


@router.post("/{rollout_id}/retry")
def retry_rollout(
    rollout_id: str, session: SessionDep, caller: OperatorDep, now: NowDep, kick: KickDep
) -> RetryResult:
    """Give failed, reverted and timed-out devices a new attempt."""
    rollout, retried = service.retry_failed(
        session, tenant_id=caller.tenant_id, actor=caller.actor, now=now, rollout_id=rollout_id
    )
    kick(rollout.id)
    return RetryResult(retried=retried, rollout=views.rollout_public(session, rollout))
