"""Writing and reading audit events.

:func:`record` only adds the event to the caller's session, so it commits or
rolls back together with the change it describes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from hub.audit.models import OUTCOMES, AuditEvent


def record(
    session: Session,
    *,
    tenant_id: str | None,
    actor: str,
    action: str,
    target_type: str,
    target_id: str,
    now: datetime,
    outcome: str = "ok",
    detail: dict[str, Any] | None = None,
) -> AuditEvent:
    """Add an audit event to ``session`` (same transaction as the change).

    Args:
        session: the session holding the change being described.
        tenant_id: owning tenant, or ``None`` for events without one.
        actor: ``key:<id>``, ``device:<id>``, ``cli`` or ``system``.
        action: dotted verb such as ``device.create`` or ``claim.refused``.
        target_type: kind of object acted on (``device``, ``api_key``...).
        target_id: its id.
        now: event time (tz-aware UTC).
        outcome: ``ok``, ``refused`` or ``failed``.
        detail: small JSON-able context; never secrets.

    Returns:
        The pending event.

    Raises:
        ValueError: on an unknown outcome (a programming error).
    """
    if outcome not in OUTCOMES:
        raise ValueError(f"unknown audit outcome {outcome!r}")
    event = AuditEvent(
        tenant_id=tenant_id,
        at=now,
        actor=actor,
        action=action,
        target_type=target_type,
        target_id=target_id,
        outcome=outcome,
        detail=detail,
    )
    session.add(event)
    return event


@dataclass(frozen=True, slots=True)
class AuditFilter:
    """Optional filters of an audit query; ``None`` means no filter."""

    action: str | None = None
    actor: str | None = None
    target_type: str | None = None
    target_id: str | None = None
    outcome: str | None = None
    since: datetime | None = None
    until: datetime | None = None


def _apply(query: Select[Any], tenant_id: str, flt: AuditFilter) -> Select[Any]:
    query = query.where(AuditEvent.tenant_id == tenant_id)
    for column, value in (
        (AuditEvent.action, flt.action),
        (AuditEvent.actor, flt.actor),
        (AuditEvent.target_type, flt.target_type),
        (AuditEvent.target_id, flt.target_id),
        (AuditEvent.outcome, flt.outcome),
    ):
        if value is not None:
            query = query.where(column == value)
    if flt.since is not None:
        query = query.where(AuditEvent.at >= flt.since)
    if flt.until is not None:
        query = query.where(AuditEvent.at < flt.until)
    return query


def list_events(
    session: Session, tenant_id: str, flt: AuditFilter, *, limit: int, offset: int
) -> tuple[list[AuditEvent], int]:
    """Return one page of a tenant's events, newest first, and the total count."""
    total = session.scalar(_apply(select(func.count(AuditEvent.id)), tenant_id, flt)) or 0
    query = _apply(select(AuditEvent), tenant_id, flt)
    rows = session.scalars(query.order_by(AuditEvent.id.desc()).limit(limit).offset(offset))
    return list(rows), total
