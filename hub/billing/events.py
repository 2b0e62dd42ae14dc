"""The event log, which is also the webhook outbox.

:func:`emit` adds an event and one pending delivery per subscribed endpoint
to the caller's session, so they commit (or roll back) with the state change
they report: an event is never sent for a change that did not happen, and a
change never happens without its event. A ``dedup_key`` makes an event
happen once: emitting the same key again is a no-op (thresholds, expiry
warnings and finalizations are checked repeatedly by jobs).
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from hub.billing.models import BillingEvent, WebhookDelivery, WebhookEndpoint

log = logging.getLogger(__name__)


def emit(
    session: Session,
    *,
    tenant_id: str,
    event_type: str,
    dedup_key: str,
    payload: dict[str, Any],
    now: datetime,
) -> BillingEvent | None:
    """Log an event and queue its webhook deliveries, once per ``dedup_key``.

    Args:
        session: the session holding the change the event reports.
        tenant_id: the tenant the event belongs to.
        event_type: e.g. ``invoice.finalized``.
        dedup_key: unique per tenant; a repeat is ignored.
        payload: JSON-able data (no secrets).
        now: the event time.

    Returns:
        The new event, or ``None`` if ``dedup_key`` was already logged.
    """
    exists = session.scalar(
        select(BillingEvent.id).where(
            BillingEvent.tenant_id == tenant_id, BillingEvent.dedup_key == dedup_key
        )
    )
    if exists is not None:
        return None
    event = BillingEvent(
        tenant_id=tenant_id,
        type=event_type,
        dedup_key=dedup_key,
        occurred_at=now,
        payload=payload,
    )
    try:
        with session.begin_nested():
            session.add(event)
            session.flush()
    except IntegrityError:  # a concurrent worker logged the same key first
        return None
    _queue_deliveries(session, event, now)
    log.info("event %s %s (%s)", event.id, event_type, dedup_key)
    return event


def _queue_deliveries(session: Session, event: BillingEvent, now: datetime) -> None:
    endpoints = session.scalars(
        select(WebhookEndpoint).where(WebhookEndpoint.tenant_id == event.tenant_id)
    )
    for endpoint in endpoints:
        if event.type in endpoint.event_types:
            session.add(
                WebhookDelivery(
                    tenant_id=event.tenant_id,
                    endpoint_id=endpoint.id,
                    event_id=event.id,
                    status="pending",
                    attempts=0,
                    next_attempt_at=now,
                    created_at=now,
                )
            )


def envelope(event: BillingEvent) -> dict[str, Any]:
    """The JSON document a webhook request carries (and ``GET /events`` lists)."""
    return {
        "id": event.id,
        "type": event.type,
        "occurred_at": event.occurred_at.isoformat(),
        "data": event.payload,
    }


def list_events(
    session: Session,
    tenant_id: str,
    *,
    event_type: str | None,
    since: datetime | None,
    after_id: int | None,
    limit: int,
    offset: int,
) -> tuple[list[BillingEvent], int]:
    """A page of the tenant's events, oldest first (``after_id`` for tailing)."""
    where = [BillingEvent.tenant_id == tenant_id]
    if event_type is not None:
        where.append(BillingEvent.type == event_type)
    if since is not None:
        where.append(BillingEvent.occurred_at >= since)
    if after_id is not None:
        where.append(BillingEvent.id > after_id)
    total = session.scalar(select(func.count()).select_from(BillingEvent).where(*where)) or 0
    rows = session.scalars(
        select(BillingEvent).where(*where).order_by(BillingEvent.id).limit(limit).offset(offset)
    )
    return list(rows), total
