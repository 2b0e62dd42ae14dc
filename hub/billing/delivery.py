"""Delivering logged events to webhook endpoints, with retries.

One pass of :func:`deliver_due` reads up to ``batch`` pending deliveries whose
``next_attempt_at`` has come, oldest first, and for each in turn:

1. claims it, by pushing its ``next_attempt_at`` past the longest an attempt
   can take with a conditional ``UPDATE`` (a second worker skips it), and
   commits; each delivery has its own lease, so a long pass never outlives one;
2. POSTs the event's JSON to its endpoint, signed (``X-Hub-Signature``), with
   no database transaction open;
3. records the outcome: a 2xx answer marks the delivery ``delivered``; any
   other answer, a timeout or a connection error schedules the next attempt
   after ``backoff * 2^(attempts - 1)`` (capped), and after ``max_attempts``
   the delivery is ``failed`` (audited).

Receivers must treat deliveries as at-least-once: a delivery whose answer was
lost is sent again with the same ``X-Hub-Delivery`` id and event id.
Redirects are not followed. Unless ``webhook_allow_private`` is set, URLs whose host
resolves to a loopback, private, link-local or reserved address are refused
(at each attempt) so tenants cannot make the hub call internal services; the
request then connects to the addresses that were checked, never resolving the
name again (no DNS rebinding between the check and the connection; see
:mod:`hub.billing.egress`).
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from http.cookiejar import CookieJar, DefaultCookiePolicy

import httpx
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from hub.audit.service import record
from hub.billing import egress
from hub.billing.events import envelope
from hub.billing.models import BillingEvent, WebhookDelivery, WebhookEndpoint
from hub.billing.secret_box import SecretBox, SecretUnavailable, endpoint_context
from hub.billing.settings import BillingSettings
from hub.billing.signatures import SIGNATURE_HEADER, signature_header

log = logging.getLogger(__name__)

USER_AGENT = "iot-hub-webhooks/1"
_ERROR_CHARS = 500
_resolve = socket.getaddrinfo  # a module attribute so tests can stand in for DNS
CONNECT_TIMEOUT_SECONDS = 5.0  # per address; the next one is tried within the attempt


@dataclass(frozen=True, slots=True)
class _Job:
    delivery_id: int
    tenant_id: str
    endpoint_id: str
    url: str
    event_type: str
    body: bytes
    secret: str | None


@dataclass(frozen=True, slots=True)
class Outcome:
    """One attempt's result."""

    delivery_id: int
    ok: bool
    status: int | None
    error: str | None


def backoff(settings: BillingSettings, attempts: int) -> timedelta:
    """Delay before attempt ``attempts + 1`` (``attempts >= 1`` made so far)."""
    seconds = settings.delivery_backoff_seconds * 2 ** min(attempts - 1, 30)
    return timedelta(seconds=min(seconds, settings.delivery_max_backoff_seconds))


def body_of(event: BillingEvent) -> bytes:
    """The exact request body for an event (compact, key-sorted JSON)."""
    return json.dumps(envelope(event), sort_keys=True, separators=(",", ":")).encode()


def _due(session: Session, settings: BillingSettings, now: datetime) -> list[tuple[int, datetime]]:
    """The oldest deliveries due at ``now`` (id and due time), up to one batch."""
    rows = session.execute(
        select(WebhookDelivery.id, WebhookDelivery.next_attempt_at)
        .where(WebhookDelivery.status == "pending", WebhookDelivery.next_attempt_at <= now)
        .order_by(WebhookDelivery.next_attempt_at, WebhookDelivery.id)
        .limit(settings.delivery_batch)
    ).all()
    return [(row[0], row[1]) for row in rows]


def attempt_bound_seconds(settings: BillingSettings) -> float:
    """The longest one attempt may take: a connect per address, then the request."""
    connect = min(settings.delivery_timeout_seconds, CONNECT_TIMEOUT_SECONDS)
    return egress.MAX_ADDRESSES * connect + 3 * settings.delivery_timeout_seconds


def _claim(
    session: Session,
    box: SecretBox,
    settings: BillingSettings,
    *,
    delivery_id: int,
    due_at: datetime,
    now: datetime,
) -> _Job | None:
    """Lease one delivery for this attempt (a second worker skips it), or ``None`` if taken."""
    lease = now + timedelta(seconds=attempt_bound_seconds(settings) + 30)
    claimed = session.execute(
        update(WebhookDelivery)
        .where(
            WebhookDelivery.id == delivery_id,
            WebhookDelivery.status == "pending",
            WebhookDelivery.next_attempt_at == due_at,
        )
        .values(next_attempt_at=lease)
        .execution_options(synchronize_session=False)
    )
    if getattr(claimed, "rowcount", 0) != 1:
        return None
    delivery, endpoint, event = session.execute(
        select(WebhookDelivery, WebhookEndpoint, BillingEvent)
        .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
        .join(BillingEvent, BillingEvent.id == WebhookDelivery.event_id)
        .where(WebhookDelivery.id == delivery_id)
    ).one()
    try:
        context = endpoint_context(endpoint.tenant_id, endpoint.id)
        secret: str | None = box.open(endpoint.secret_sealed, context=context)
    except SecretUnavailable:
        secret = None
    return _Job(delivery.id, endpoint.tenant_id, endpoint.id, endpoint.url, event.type,
                body_of(event), secret)  # fmt: skip


def _send_safely(client: httpx.Client, job: _Job, now: datetime, allow_private: bool) -> Outcome:
    """:func:`_send`, with any defect turned into a failed attempt for this job alone.

    One endpoint must never stop the deliveries of the others (or of other tenants).
    """
    try:
        return _send(client, job, now, allow_private)
    except Exception as exc:
        log.exception("webhook delivery %s failed unexpectedly", job.delivery_id)
        return Outcome(job.delivery_id, False, None, f"internal error: {type(exc).__name__}")


def _send(client: httpx.Client, job: _Job, now: datetime, allow_private: bool) -> Outcome:
    if job.secret is None:
        return Outcome(job.delivery_id, False, None, "the endpoint's secret cannot be opened")
    target = egress.unpinned(job.url) if allow_private else egress.pinned_target(job.url, _resolve)
    if isinstance(target, str):
        return Outcome(job.delivery_id, False, None, target)
    timestamp = int(now.timestamp())
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        SIGNATURE_HEADER: signature_header(job.secret, timestamp, job.body),
        "X-Hub-Event": job.event_type,
        "X-Hub-Delivery": str(job.delivery_id),
        **target.headers,
    }
    return _post(client, job, target, headers)


def _post(
    client: httpx.Client, job: _Job, target: egress.Target, headers: dict[str, str]
) -> Outcome:
    """POST to each of the target's addresses in turn until one accepts the connection."""
    error = "no address"
    for url in target.urls:
        try:
            response = client.post(
                url, content=job.body, headers=headers, extensions=target.extensions
            )
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:  # nothing was sent yet
            error = f"{type(exc).__name__}: {exc}"  # e.g. an IPv6 answer on an IPv4-only host
            continue
        except httpx.HTTPError as exc:
            return Outcome(job.delivery_id, False, None, f"{type(exc).__name__}: {exc}")
        if response.is_success:
            return Outcome(job.delivery_id, True, response.status_code, None)
        return Outcome(job.delivery_id, False, response.status_code, f"HTTP {response.status_code}")
    return Outcome(job.delivery_id, False, None, error)


def _record(session: Session, settings: BillingSettings, outcome: Outcome, now: datetime) -> None:
    delivery = session.get_one(WebhookDelivery, outcome.delivery_id)
    delivery.attempts += 1
    delivery.last_attempt_at = now
    delivery.response_status = outcome.status
    delivery.last_error = None if outcome.error is None else outcome.error[:_ERROR_CHARS]
    if outcome.ok:
        delivery.status = "delivered"
        delivery.delivered_at = now
        delivery.next_attempt_at = now
        return
    if delivery.attempts >= settings.delivery_max_attempts:
        delivery.status = "failed"
        delivery.next_attempt_at = now
        record(
            session, tenant_id=delivery.tenant_id, actor="system", action="webhook.delivery_failed",
            target_type="webhook", target_id=delivery.endpoint_id, now=now, outcome="failed",
            detail={"delivery_id": delivery.id, "event_id": delivery.event_id,
                    "attempts": delivery.attempts, "error": delivery.last_error},
        )  # fmt: skip
        log.warning("webhook delivery %s failed for good: %s", delivery.id, delivery.last_error)
        return
    delivery.next_attempt_at = now + backoff(settings, delivery.attempts)


def deliver_due(
    session_factory: sessionmaker[Session],
    clock: Callable[[], datetime],
    box: SecretBox,
    settings: BillingSettings,
    *,
    client: httpx.Client | None = None,
) -> list[Outcome]:
    """One delivery pass (see the module docstring); returns each attempt's outcome."""
    with session_factory() as session:
        due = _due(session, settings, clock())
    if not due:
        return []
    http = client or _http_client(settings)
    outcomes: list[Outcome] = []
    try:
        run = _Pass(session_factory, clock, box, settings, http)
        for delivery_id, due_at in due:
            outcome = _attempt(run, delivery_id, due_at)
            if outcome is not None:
                outcomes.append(outcome)
    finally:
        if client is None:
            http.close()
    return outcomes


@dataclass(frozen=True, slots=True)
class _Pass:
    session_factory: sessionmaker[Session]
    clock: Callable[[], datetime]
    box: SecretBox
    settings: BillingSettings
    http: httpx.Client


def _attempt(run: _Pass, delivery_id: int, due_at: datetime) -> Outcome | None:
    """Claim one delivery (its own lease, so a long pass never outlives it), send, record."""
    now = run.clock()
    with run.session_factory() as session:
        job = _claim(
            session, run.box, run.settings, delivery_id=delivery_id, due_at=due_at, now=now
        )
        session.commit()
    if job is None:
        return None
    outcome = _send_safely(run.http, job, now, run.settings.webhook_allow_private)
    with run.session_factory() as session:
        _record(session, run.settings, outcome, run.clock())
        session.commit()
    if not outcome.ok:
        log.info("webhook delivery %s: %s", outcome.delivery_id, outcome.error)
    return outcome


def _http_client(settings: BillingSettings) -> httpx.Client:
    # Requests are pinned by address, so connections and cookies would be shared by
    # every endpoint behind one address: no keep-alive (a connection whose TLS was
    # checked for one endpoint's name never carries another's request) and no cookies.
    # A short connect timeout lets the next address be tried within the attempt.
    timeout = settings.delivery_timeout_seconds
    return httpx.Client(
        timeout=httpx.Timeout(timeout, connect=min(timeout, CONNECT_TIMEOUT_SECONDS)),
        follow_redirects=False,
        trust_env=False,
        limits=httpx.Limits(max_keepalive_connections=0),
        cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])),
    )
