"""``/api/v1/entitlements/{entitlement_id}/activations``: bind entitlements to devices."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, status

from hub.api.deps import NowDep, OperatorDep, SessionDep, ViewerDep
from hub.entitlements import activations as service
from hub.entitlements.models import Activation
from hub.entitlements.routers.common import NotifyDep
from hub.entitlements.schemas import (
    ActivationChange,
    ActivationCreate,
    ActivationPublic,
    ReasonBody,
)
from hub.entitlements.service import Outcome

router = APIRouter(prefix="/entitlements/{entitlement_id}/activations", tags=["activations"])


def _change(outcome: Outcome[Activation], notify: NotifyDep) -> ActivationChange:
    return ActivationChange(
        activation=ActivationPublic.model_validate(outcome.value),
        affected_device_ids=notify(outcome.device_ids),
    )


@router.get("")
def list_activations(
    entitlement_id: str,
    session: SessionDep,
    caller: ViewerDep,
    include_closed: bool = False,
) -> list[ActivationPublic]:
    """The entitlement's activations (open ones, or all with ``include_closed``)."""
    items = service.list_activations(
        session, caller.tenant_id, entitlement_id, include_closed=include_closed
    )
    return [ActivationPublic.model_validate(a) for a in items]


@router.post("", status_code=status.HTTP_201_CREATED)
def activate(
    *,
    entitlement_id: str,
    body: ActivationCreate,
    session: SessionDep,
    caller: OperatorDep,
    now: NowDep,
    notify: NotifyDep,
) -> ActivationChange:
    """Activate the entitlement on a device."""
    outcome = service.activate(
        session,
        tenant_id=caller.tenant_id,
        actor=caller.actor,
        now=now,
        entitlement_id=entitlement_id,
        device_id=body.device_id,
        reason=body.reason,
    )
    return _change(outcome, notify)


@router.delete("/{device_id}")
def deactivate(
    *,
    entitlement_id: str,
    device_id: str,
    session: SessionDep,
    caller: OperatorDep,
    now: NowDep,
    notify: NotifyDep,
    reason: Annotated[str, Query(max_length=2000)] = "",
) -> ActivationChange:
    """Deactivate the entitlement on a device (releases its seat)."""
    outcome = service.deactivate(
        session,
        tenant_id=caller.tenant_id,
        actor=caller.actor,
        now=now,
        entitlement_id=entitlement_id,
        device_id=device_id,
        reason=reason,
    )
    return _change(outcome, notify)


@router.post("/{device_id}/confirm")
def confirm_rehost(
    *,
    entitlement_id: str,
    device_id: str,
    body: ReasonBody,
    session: SessionDep,
    caller: OperatorDep,
    now: NowDep,
    notify: NotifyDep,
) -> ActivationChange:
    """Make a rehost's temporary activation permanent before it lapses."""
    outcome = service.confirm_rehost(
        session,
        tenant_id=caller.tenant_id,
        actor=caller.actor,
        now=now,
        entitlement_id=entitlement_id,
        device_id=device_id,
        reason=body.reason,
    )
    return _change(outcome, notify)
