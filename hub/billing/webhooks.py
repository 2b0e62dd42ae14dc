"""Webhook endpoints: create (secret shown once), list, rotate, delete; deliveries.

The signing and verification helpers are in :mod:`hub.billing.signatures`
(re-exported here for receivers: :func:`verify_signature`); the delivery job
is :mod:`hub.billing.delivery`; secrets at rest are :mod:`hub.billing.secret_box`.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from urllib.parse import urlsplit

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from hub.audit.service import record
from hub.billing.models import WebhookDelivery, WebhookEndpoint
from hub.billing.schemas import WebhookCreate
from hub.billing.secret_box import SecretBox, endpoint_context, new_webhook_secret
from hub.billing.signatures import SIGNATURE_HEADER, signature_header, verify_signature
from hub.errors import NotFound, ValidationFailed

__all__ = [
    "SIGNATURE_HEADER",
    "create_endpoint",
    "delete_endpoint",
    "get_endpoint",
    "list_deliveries",
    "list_endpoints",
    "rotate_secret",
    "signature_header",
    "verify_signature",
]

MAX_ENDPOINTS = 20


def _check_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValidationFailed("webhook url must be http(s)://host/...")
    if parts.username or parts.password:
        raise ValidationFailed("webhook url must not carry credentials")
    if parts.fragment:
        raise ValidationFailed("webhook url must not carry a fragment")
    try:
        parts.hostname.encode("idna")
    except UnicodeError:
        raise ValidationFailed("webhook url host is not a valid domain name") from None
    return url


def create_endpoint(
    session: Session,
    box: SecretBox,
    *,
    tenant_id: str,
    actor: str,
    now: datetime,
    data: WebhookCreate,
) -> tuple[WebhookEndpoint, str]:
    """Register an endpoint; returns it and its new secret (shown only this once).

    Raises:
        ValidationFailed: bad URL, or too many endpoints.
    """
    url = _check_url(str(data.url))
    count = session.scalar(
        select(func.count())
        .select_from(WebhookEndpoint)
        .where(WebhookEndpoint.tenant_id == tenant_id)
    )
    if (count or 0) >= MAX_ENDPOINTS:
        raise ValidationFailed(f"a tenant has at most {MAX_ENDPOINTS} webhook endpoints")
    endpoint_id = str(uuid.uuid4())
    secret = new_webhook_secret()
    endpoint = WebhookEndpoint(
        id=endpoint_id, tenant_id=tenant_id, url=url, description=data.description,
        event_types=sorted(set(data.event_types)),
        secret_sealed=box.seal(secret, context=endpoint_context(tenant_id, endpoint_id)),
        created_at=now, updated_at=now,
    )  # fmt: skip
    session.add(endpoint)
    session.flush()
    record(
        session, tenant_id=tenant_id, actor=actor, action="webhook.create",
        target_type="webhook", target_id=endpoint_id, now=now,
        detail={"url": url, "event_types": endpoint.event_types},
    )  # fmt: skip
    return endpoint, secret


def get_endpoint(session: Session, tenant_id: str, endpoint_id: str) -> WebhookEndpoint:
    """The tenant's endpoint.

    Raises:
        NotFound: no such endpoint for this tenant.
    """
    endpoint = session.get(WebhookEndpoint, endpoint_id)
    if endpoint is None or endpoint.tenant_id != tenant_id:
        raise NotFound(f"webhook {endpoint_id} not found")
    return endpoint


def list_endpoints(session: Session, tenant_id: str) -> list[WebhookEndpoint]:
    """Every endpoint of the tenant, oldest first."""
    return list(
        session.scalars(
            select(WebhookEndpoint)
            .where(WebhookEndpoint.tenant_id == tenant_id)
            .order_by(WebhookEndpoint.created_at, WebhookEndpoint.id)
        )
    )


def rotate_secret(
    session: Session, box: SecretBox, *, tenant_id: str, actor: str, now: datetime, endpoint_id: str
) -> tuple[WebhookEndpoint, str]:
    """Replace an endpoint's secret; returns it and the new secret (shown once)."""
    endpoint = get_endpoint(session, tenant_id, endpoint_id)
    secret = new_webhook_secret()
    endpoint.secret_sealed = box.seal(secret, context=endpoint_context(tenant_id, endpoint_id))
    endpoint.updated_at = now
    record(
        session, tenant_id=tenant_id, actor=actor, action="webhook.rotate_secret",
        target_type="webhook", target_id=endpoint_id, now=now,
    )  # fmt: skip
    return endpoint, secret


def delete_endpoint(
    session: Session, *, tenant_id: str, actor: str, now: datetime, endpoint_id: str
) -> None:
    """Delete an endpoint and its pending deliveries."""
    endpoint = get_endpoint(session, tenant_id, endpoint_id)
    session.delete(endpoint)
    record(
        session, tenant_id=tenant_id, actor=actor, action="webhook.delete",
        target_type="webhook", target_id=endpoint_id, now=now, detail={"url": endpoint.url},
    )  # fmt: skip


def list_deliveries(
    session: Session, tenant_id: str, endpoint_id: str, *, limit: int, offset: int
) -> tuple[list[WebhookDelivery], int]:
    """A page of an endpoint's deliveries, newest first."""
    get_endpoint(session, tenant_id, endpoint_id)
    where = (WebhookDelivery.tenant_id == tenant_id, WebhookDelivery.endpoint_id == endpoint_id)
    total = session.scalar(select(func.count()).select_from(WebhookDelivery).where(*where)) or 0
    rows = session.scalars(
        select(WebhookDelivery)
        .where(*where)
        .order_by(WebhookDelivery.id.desc())
        .limit(limit)
        .offset(offset)
    )
    return list(rows), total
