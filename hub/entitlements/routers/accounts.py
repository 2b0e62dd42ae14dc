"""``/api/v1/accounts``: customer accounts and their entitlement history."""

from __future__ import annotations

from fastapi import APIRouter, status

from hub.api.deps import NowDep, OperatorDep, Page, PaginationDep, SessionDep, ViewerDep
from hub.entitlements import history, service
from hub.entitlements.routers.common import history_page
from hub.entitlements.schemas import (
    AccountCreate,
    AccountPublic,
    AccountUpdate,
    HistoryEntryPublic,
)

router = APIRouter(prefix="/accounts", tags=["accounts"])


@router.post("", status_code=status.HTTP_201_CREATED)
def create_account(
    body: AccountCreate, session: SessionDep, caller: OperatorDep, now: NowDep
) -> AccountPublic:
    """Create a customer account (name unique per tenant)."""
    account = service.create_account(
        session, tenant_id=caller.tenant_id, actor=caller.actor, now=now, data=body
    )
    return AccountPublic.model_validate(account)


@router.get("")
def list_accounts(
    session: SessionDep, caller: ViewerDep, page: PaginationDep
) -> Page[AccountPublic]:
    """List accounts ordered by name."""
    items, total = service.list_accounts(
        session, caller.tenant_id, limit=page.limit, offset=page.offset
    )
    return Page[AccountPublic](
        items=[AccountPublic.model_validate(a) for a in items],
        total=total,
        limit=page.limit,
        offset=page.offset,
    )


@router.get("/{account_id}")
def get_account(account_id: str, session: SessionDep, caller: ViewerDep) -> AccountPublic:
    """Get one account."""
    return AccountPublic.model_validate(service.get_account(session, caller.tenant_id, account_id))


@router.patch("/{account_id}")
def update_account(
    account_id: str, body: AccountUpdate, session: SessionDep, caller: OperatorDep, now: NowDep
) -> AccountPublic:
    """Rename an account or change its external reference."""
    account = service.update_account(
        session,
        tenant_id=caller.tenant_id,
        actor=caller.actor,
        now=now,
        account_id=account_id,
        data=body,
    )
    return AccountPublic.model_validate(account)


@router.get("/{account_id}/history")
def account_history(
    account_id: str, session: SessionDep, caller: ViewerDep, page: PaginationDep
) -> Page[HistoryEntryPublic]:
    """The account's entitlement history, newest first: who did what, when, why."""
    service.get_account(session, caller.tenant_id, account_id)
    result = history.for_account(
        session, caller.tenant_id, account_id, limit=page.limit, offset=page.offset
    )
    return history_page(result, page)
