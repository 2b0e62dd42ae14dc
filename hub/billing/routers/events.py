"""``/api/v1/events`` (the event log) and ``/api/v1/webhooks`` (receivers)."""

from __future__ import annotations

from fastapi import APIRouter, Response, status
from pydantic import AwareDatetime

from hub.api.deps import AdminDep, NowDep, Page, PaginationDep, SessionDep, ViewerDep
from hub.billing import events, webhooks
from hub.billing.routers.deps import SecretBoxDep
from hub.billing.schemas import (
    DeliveryPublic,
    EventPublic,
    EventType,
    WebhookCreate,
    WebhookCreated,
    WebhookPublic,
)

events_router = APIRouter(prefix="/events", tags=["billing"])
webhooks_router = APIRouter(prefix="/webhooks", tags=["billing"])


@events_router.get("")
def list_events(
    *,
    session: SessionDep,
    caller: ViewerDep,
    page: PaginationDep,
    type: EventType | None = None,
    since: AwareDatetime | None = None,
    after_id: int | None = None,
) -> Page[EventPublic]:
    """The event log, oldest first; ``after_id`` tails it from a known event."""
    rows, total = events.list_events(
        session, caller.tenant_id, event_type=type, since=since, after_id=after_id,
        limit=page.limit, offset=page.offset,
    )  # fmt: skip
    return Page[EventPublic](
        items=[EventPublic.model_validate(r) for r in rows],
        total=total,
        limit=page.limit,
        offset=page.offset,
    )


@webhooks_router.post("", status_code=status.HTTP_201_CREATED)
def create_webhook(
    body: WebhookCreate, session: SessionDep, caller: AdminDep, now: NowDep, box: SecretBoxDep
) -> WebhookCreated:
    """Register a receiver; the answer holds its signing secret, shown this once."""
    endpoint, secret = webhooks.create_endpoint(
        session, box, tenant_id=caller.tenant_id, actor=caller.actor, now=now, data=body
    )
    return WebhookCreated(**WebhookPublic.model_validate(endpoint).model_dump(), secret=secret)


@webhooks_router.get("")
def list_webhooks(session: SessionDep, caller: ViewerDep) -> list[WebhookPublic]:
    """Every receiver of the tenant (secrets never included)."""
    return [
        WebhookPublic.model_validate(e) for e in webhooks.list_endpoints(session, caller.tenant_id)
    ]


@webhooks_router.get("/{webhook_id}")
def get_webhook(webhook_id: str, session: SessionDep, caller: ViewerDep) -> WebhookPublic:
    """One receiver."""
    return WebhookPublic.model_validate(
        webhooks.get_endpoint(session, caller.tenant_id, webhook_id)
    )


@webhooks_router.post("/{webhook_id}/rotate-secret")
def rotate_webhook_secret(
    webhook_id: str, session: SessionDep, caller: AdminDep, now: NowDep, box: SecretBoxDep
) -> WebhookCreated:
    """Replace the signing secret; the answer shows the new one, once."""
    endpoint, secret = webhooks.rotate_secret(
        session, box, tenant_id=caller.tenant_id, actor=caller.actor, now=now,
        endpoint_id=webhook_id,
    )  # fmt: skip
    return WebhookCreated(**WebhookPublic.model_validate(endpoint).model_dump(), secret=secret)


@webhooks_router.delete("/{webhook_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_webhook(webhook_id: str, session: SessionDep, caller: AdminDep, now: NowDep) -> Response:
    """Remove a receiver and its pending deliveries."""
    webhooks.delete_endpoint(
        session, tenant_id=caller.tenant_id, actor=caller.actor, now=now, endpoint_id=webhook_id
    )
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@webhooks_router.get("/{webhook_id}/deliveries")
def list_deliveries(
    webhook_id: str, session: SessionDep, caller: ViewerDep, page: PaginationDep
) -> Page[DeliveryPublic]:
    """The receiver's deliveries, newest first: attempts, last status, next retry."""
    rows, total = webhooks.list_deliveries(
        session, caller.tenant_id, webhook_id, limit=page.limit, offset=page.offset
    )
    return Page[DeliveryPublic](
        items=[DeliveryPublic.model_validate(r) for r in rows],
        total=total,
        limit=page.limit,
        offset=page.offset,
    )
