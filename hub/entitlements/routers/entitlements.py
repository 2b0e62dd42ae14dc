"""``/api/v1/entitlements``: grant, list, change and run the lifecycle of entitlements.

Every action answers with the entitlement and ``affected_device_ids``: the
devices whose effective features may have changed.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, status

from hub.api.deps import NowDep, OperatorDep, Page, PaginationDep, SessionDep, ViewerDep
from hub.entitlements import activations, history, seats, service
from hub.entitlements.models import Entitlement
from hub.entitlements.routers.common import NotifyDep, history_page
from hub.entitlements.schemas import (
    ActivationChange,
    ActivationPublic,
    EntitlementChange,
    EntitlementCreate,
    EntitlementPublic,
    EntitlementUpdate,
    HistoryEntryPublic,
    LicenseModel,
    ReasonBody,
    RehostBody,
    RenewBody,
    SeatPublic,
    Status,
)

router = APIRouter(prefix="/entitlements", tags=["entitlements"])


def _change(outcome: service.Outcome[Entitlement], notify: NotifyDep) -> EntitlementChange:
    return EntitlementChange(
        entitlement=EntitlementPublic.model_validate(outcome.value),
        affected_device_ids=notify(outcome.device_ids),
    )


@router.post("", status_code=status.HTTP_201_CREATED)
def create_entitlement(
    body: EntitlementCreate, session: SessionDep, caller: OperatorDep, now: NowDep
) -> EntitlementPublic:
    """Grant a product to an account; activate it on devices next."""
    outcome = service.create_entitlement(
        session, tenant_id=caller.tenant_id, actor=caller.actor, now=now, data=body
    )
    return EntitlementPublic.model_validate(outcome.value)


@router.get("")
def list_entitlements(
    *,
    session: SessionDep,
    caller: ViewerDep,
    page: PaginationDep,
    account_id: Annotated[str | None, Query(max_length=36)] = None,
    product_id: Annotated[str | None, Query(max_length=36)] = None,
    status: Status | None = None,
    license_model: LicenseModel | None = None,
) -> Page[EntitlementPublic]:
    """List entitlements, oldest first, filtered by account, product, status or model."""
    flt = service.EntitlementFilter(
        account_id=account_id, product_id=product_id, status=status, license_model=license_model
    )
    items, total = service.list_entitlements(
        session, caller.tenant_id, flt, limit=page.limit, offset=page.offset
    )
    return Page[EntitlementPublic](
        items=[EntitlementPublic.model_validate(e) for e in items],
        total=total,
        limit=page.limit,
        offset=page.offset,
    )


@router.get("/{entitlement_id}")
def get_entitlement(
    entitlement_id: str, session: SessionDep, caller: ViewerDep
) -> EntitlementPublic:
    """Get one entitlement."""
    ent = service.get_entitlement(session, caller.tenant_id, entitlement_id)
    return EntitlementPublic.model_validate(ent)


@router.patch("/{entitlement_id}")
def update_entitlement(
    *,
    entitlement_id: str,
    body: EntitlementUpdate,
    session: SessionDep,
    caller: OperatorDep,
    now: NowDep,
    notify: NotifyDep,
) -> EntitlementChange:
    """Replace the feature overrides, change the grace period and/or the quantity."""
    outcome = service.update_entitlement(
        session,
        tenant_id=caller.tenant_id,
        actor=caller.actor,
        now=now,
        entitlement_id=entitlement_id,
        data=body,
    )
    return _change(outcome, notify)


@router.post("/{entitlement_id}/suspend")
def suspend(
    *,
    entitlement_id: str,
    body: ReasonBody,
    session: SessionDep,
    caller: OperatorDep,
    now: NowDep,
    notify: NotifyDep,
) -> EntitlementChange:
    """Suspend an active entitlement."""
    outcome = service.suspend(
        session,
        tenant_id=caller.tenant_id,
        actor=caller.actor,
        now=now,
        entitlement_id=entitlement_id,
        reason=body.reason,
    )
    return _change(outcome, notify)


@router.post("/{entitlement_id}/resume")
def resume(
    *,
    entitlement_id: str,
    body: ReasonBody,
    session: SessionDep,
    caller: OperatorDep,
    now: NowDep,
    notify: NotifyDep,
) -> EntitlementChange:
    """Resume a suspended entitlement."""
    outcome = service.resume(
        session,
        tenant_id=caller.tenant_id,
        actor=caller.actor,
        now=now,
        entitlement_id=entitlement_id,
        reason=body.reason,
    )
    return _change(outcome, notify)


@router.post("/{entitlement_id}/revoke")
def revoke(
    *,
    entitlement_id: str,
    body: ReasonBody,
    session: SessionDep,
    caller: OperatorDep,
    now: NowDep,
    notify: NotifyDep,
) -> EntitlementChange:
    """Revoke an entitlement for good."""
    outcome = service.revoke(
        session,
        tenant_id=caller.tenant_id,
        actor=caller.actor,
        now=now,
        entitlement_id=entitlement_id,
        reason=body.reason,
    )
    return _change(outcome, notify)


@router.post("/{entitlement_id}/renew")
def renew(
    *,
    entitlement_id: str,
    body: RenewBody,
    session: SessionDep,
    caller: OperatorDep,
    now: NowDep,
    notify: NotifyDep,
) -> EntitlementChange:
    """Extend the term (to ``ends_at``, by ``term_seconds``, or by one more term)."""
    outcome = service.renew(
        session,
        tenant_id=caller.tenant_id,
        actor=caller.actor,
        now=now,
        entitlement_id=entitlement_id,
        body=body,
    )
    return _change(outcome, notify)


@router.post("/{entitlement_id}/rehost")
def rehost(
    *,
    entitlement_id: str,
    body: RehostBody,
    session: SessionDep,
    caller: OperatorDep,
    now: NowDep,
    notify: NotifyDep,
) -> ActivationChange:
    """Move the entitlement from a failed device to its replacement, in one transaction.

    With ``temporary_seconds`` the replacement's activation is temporary until
    confirmed (``POST .../activations/{device_id}/confirm``) or it lapses.
    """
    outcome = activations.rehost(
        session,
        tenant_id=caller.tenant_id,
        actor=caller.actor,
        now=now,
        entitlement_id=entitlement_id,
        from_device_id=body.from_device_id,
        to_device_id=body.to_device_id,
        temporary_seconds=body.temporary_seconds,
        reason=body.reason,
    )
    return ActivationChange(
        activation=ActivationPublic.model_validate(outcome.value),
        affected_device_ids=notify(outcome.device_ids),
    )


@router.get("/{entitlement_id}/seats")
def list_seats(entitlement_id: str, session: SessionDep, caller: ViewerDep) -> list[SeatPublic]:
    """The floating seats currently held."""
    service.get_entitlement(session, caller.tenant_id, entitlement_id)
    return [SeatPublic.model_validate(s) for s in seats.list_seats(session, entitlement_id)]


@router.get("/{entitlement_id}/history")
def entitlement_history(
    entitlement_id: str, session: SessionDep, caller: ViewerDep, page: PaginationDep
) -> Page[HistoryEntryPublic]:
    """The entitlement's history, newest first."""
    service.get_entitlement(session, caller.tenant_id, entitlement_id)
    result = history.for_entitlement(
        session, caller.tenant_id, entitlement_id, limit=page.limit, offset=page.offset
    )
    return history_page(result, page)
