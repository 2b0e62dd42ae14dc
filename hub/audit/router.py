"""``/api/v1/audit``: the tenant's audit log, newest first."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from pydantic import AwareDatetime

from hub.api.deps import Page, PaginationDep, SessionDep, ViewerDep
from hub.audit.schemas import AuditEventPublic
from hub.audit.service import AuditFilter, list_events

router = APIRouter(prefix="/audit", tags=["audit"])


@router.get("")
def list_audit_events(
    *,
    session: SessionDep,
    caller: ViewerDep,
    page: PaginationDep,
    action: str | None = None,
    actor: str | None = None,
    target_type: str | None = None,
    target_id: str | None = None,
    outcome: Literal["ok", "refused", "failed"] | None = None,
    since: AwareDatetime | None = None,
    until: AwareDatetime | None = None,
) -> Page[AuditEventPublic]:
    """List audit events; ``since`` is inclusive, ``until`` exclusive."""
    flt = AuditFilter(
        action=action,
        actor=actor,
        target_type=target_type,
        target_id=target_id,
        outcome=outcome,
        since=since,
        until=until,
    )
    items, total = list_events(session, caller.tenant_id, flt, limit=page.limit, offset=page.offset)
    return Page[AuditEventPublic](
        items=[AuditEventPublic.model_validate(e) for e in items],
        total=total,
        limit=page.limit,
        offset=page.offset,
    )
