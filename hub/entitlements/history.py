"""The entitlement history: who did what to which entitlement, on which device, why.

:func:`log` writes a history entry **and** the matching audit event into the
caller's session, so both commit or roll back with the change they describe.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from hub.audit.service import record
from hub.entitlements.models import Entitlement, EntitlementEvent


def log(
    session: Session,
    entitlement: Entitlement,
    *,
    actor: str,
    action: str,
    now: datetime,
    device_id: str | None = None,
    reason: str = "",
    detail: dict[str, Any] | None = None,
) -> EntitlementEvent:
    """Add a history entry and an audit event for ``entitlement``.

    Args:
        session: the session holding the change.
        entitlement: the entitlement acted on.
        actor: ``key:<id>``, ``device:<id>`` or ``system``.
        action: dotted verb, e.g. ``entitlement.suspend``.
        now: event time (tz-aware UTC).
        device_id: the device concerned, if any.
        reason: why (free text from the operator).
        detail: small JSON-able context.

    Returns:
        The pending history entry.
    """
    event = EntitlementEvent(
        tenant_id=entitlement.tenant_id,
        account_id=entitlement.account_id,
        entitlement_id=entitlement.id,
        device_id=device_id,
        at=now,
        actor=actor,
        action=action,
        reason=reason,
        detail=detail,
    )
    session.add(event)
    audit_detail: dict[str, Any] = dict(detail or {})
    if device_id is not None:
        audit_detail["device_id"] = device_id
    if reason:
        audit_detail["reason"] = reason
    record(
        session,
        tenant_id=entitlement.tenant_id,
        actor=actor,
        action=action,
        target_type="entitlement",
        target_id=entitlement.id,
        now=now,
        detail=audit_detail or None,
    )
    return event


def _page(
    session: Session, query: Select[Any], limit: int, offset: int
) -> tuple[list[EntitlementEvent], int]:
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    ordered = query.order_by(EntitlementEvent.at.desc(), EntitlementEvent.id.desc())
    return list(session.scalars(ordered.limit(limit).offset(offset))), total


def for_account(
    session: Session, tenant_id: str, account_id: str, *, limit: int, offset: int
) -> tuple[list[EntitlementEvent], int]:
    """A page of an account's history, newest first (callers check the account exists)."""
    query = select(EntitlementEvent).where(
        EntitlementEvent.tenant_id == tenant_id, EntitlementEvent.account_id == account_id
    )
    return _page(session, query, limit, offset)


def for_device(
    session: Session, tenant_id: str, device_id: str, *, limit: int, offset: int
) -> tuple[list[EntitlementEvent], int]:
    """A page of a device's entitlement history, newest first."""
    query = select(EntitlementEvent).where(
        EntitlementEvent.tenant_id == tenant_id, EntitlementEvent.device_id == device_id
    )
    return _page(session, query, limit, offset)


def for_entitlement(
    session: Session, tenant_id: str, entitlement_id: str, *, limit: int, offset: int
) -> tuple[list[EntitlementEvent], int]:
    """A page of one entitlement's history, newest first."""
    query = select(EntitlementEvent).where(
        EntitlementEvent.tenant_id == tenant_id,
        EntitlementEvent.entitlement_id == entitlement_id,
    )
    return _page(session, query, limit, offset)
