"""Webhooks: signed deliveries to a real local HTTP server, retries, backoff, events."""

from __future__ import annotations

import ipaddress
import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from hub.audit.models import AuditEvent
from hub.billing import delivery, egress, notify
from hub.billing.delivery import Outcome, deliver_due
from hub.billing.models import WebhookDelivery, WebhookEndpoint
from hub.billing.secret_box import SecretBox
from hub.billing.settings import BillingSettings
from hub.billing.signatures import SignatureInvalid, verify_signature
from tests.hub.billing.conftest import GRACE, JAN, Biller, billing_settings
from tests.hub.billing.test_closing import GRADUATED

EVENTS = ["invoice.finalized", "usage.threshold_reached", "entitlement.expiring"]


@dataclass
class Receiver:
    """A webhook receiver on 127.0.0.1 that answers 500 to the first ``failures`` requests."""

    failures: int = 0
    set_cookie: str | None = None  # a Set-Cookie header to answer with
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            state.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
            failing = len(state.requests) <= state.failures
            self.send_response(500 if failing else 204)
            if state.set_cookie is not None:
                self.send_header("Set-Cookie", state.set_cookie)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.server = server
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def register(biller: Biller, url: str, events: list[str] = EVENTS) -> dict[str, Any]:
    return dict(biller.ok(biller.post("/webhooks", {"url": url, "event_types": events}), 201))


def deliver(
    biller: Biller, app: FastAPI, now: datetime, settings: BillingSettings | None = None
) -> list[Outcome]:
    box = SecretBox(app.state.settings.keys_dir)
    return deliver_due(biller.factory, lambda: now, box, settings or biller.settings)


def finalized_invoice(biller: Biller) -> datetime:
    biller.plan(GRADUATED)
    biller.usage(42, JAN[0] + timedelta(days=1))
    close = JAN[1] + GRACE
    biller.run(close)
    return close


def deliveries(biller: Biller) -> list[WebhookDelivery]:
    with biller.factory() as s:
        rows = list(
            s.scalars(
                select(WebhookDelivery)
                .where(WebhookDelivery.tenant_id == biller.tenant_id)
                .order_by(WebhookDelivery.id)
            )
        )
        s.expunge_all()
        return rows


def test_secret_is_shown_once_and_stored_sealed(biller: Biller) -> None:
    created = register(biller, "https://example.com/hooks")
    secret = created["secret"]
    assert secret.startswith("whsec_") and len(secret) > 40
    listed = biller.ok(biller.get("/webhooks"))
    shown = biller.ok(biller.get(f"/webhooks/{created['id']}"))
    assert "secret" not in json.dumps(listed) and "secret" not in shown
    with biller.factory() as s:
        row = s.get_one(WebhookEndpoint, created["id"])
        assert secret not in row.secret_sealed and row.secret_sealed.startswith("v1:")
    rotated = biller.ok(biller.post(f"/webhooks/{created['id']}/rotate-secret"))
    assert rotated["secret"] != secret
    with biller.factory() as s:
        audited = s.scalars(
            select(AuditEvent.detail).where(
                AuditEvent.tenant_id == biller.tenant_id, AuditEvent.target_type == "webhook"
            )
        ).all()
    assert len(audited) == 2 and secret not in json.dumps(audited)


def test_webhook_validation_roles_and_isolation(biller: Biller, other_biller: Biller) -> None:
    bad = biller.post("/webhooks", {"url": "ftp://x.example/h", "event_types": EVENTS})
    assert bad.status_code == 422
    unknown = biller.post("/webhooks", {"url": "https://x.example", "event_types": ["nope"]})
    assert unknown.status_code == 422
    creds = biller.post("/webhooks", {"url": "https://u:p@x.example/", "event_types": EVENTS})
    assert creds.status_code == 422
    viewer = biller.client.post(
        "/api/v1/webhooks",
        json={"url": "https://x.example/", "event_types": EVENTS},
        headers=biller.headers("viewer"),
    )
    assert viewer.status_code == 403
    created = register(biller, "https://x.example/h")
    assert other_biller.get(f"/webhooks/{created['id']}").status_code == 404
    gone = other_biller.client.delete(
        f"/api/v1/webhooks/{created['id']}", headers=other_biller.headers()
    )
    assert gone.status_code == 404
    assert other_biller.ok(other_biller.get("/webhooks")) == []


def test_signed_delivery_with_retries_and_backoff(
    biller: Biller, app: FastAPI, receiver: Receiver
) -> None:
    receiver.failures = 2
    secret = register(biller, receiver.url)["secret"]
    close = finalized_invoice(biller)
    [first] = deliver(biller, app, close)
    assert (first.ok, first.status) == (False, 500)
    [pending] = deliveries(biller)
    assert (pending.status, pending.attempts) == ("pending", 1)
    assert pending.next_attempt_at == close + timedelta(seconds=10)
    assert deliver(biller, app, close + timedelta(seconds=9)) == []  # not due yet
    [second] = deliver(biller, app, close + timedelta(seconds=10))
    assert not second.ok
    assert deliveries(biller)[0].next_attempt_at == close + timedelta(seconds=30)  # 10 * 2
    [third] = deliver(biller, app, close + timedelta(seconds=30))
    assert (third.ok, third.status) == (True, 204)
    [done] = deliveries(biller)
    assert (done.status, done.attempts) == ("delivered", 3)
    assert deliver(biller, app, close + timedelta(hours=1)) == []

    assert len(receiver.requests) == 3
    bodies = {body for _, body in receiver.requests}
    assert len(bodies) == 1  # the same event every time
    for headers, body in receiver.requests:
        assert headers["x-hub-event"] == "invoice.finalized"
        assert headers["x-hub-delivery"] == str(done.id)
        assert headers["content-type"] == "application/json"
        stamp = int(headers["x-hub-signature"].split(",")[0].removeprefix("t="))
        verify_signature(secret, headers["x-hub-signature"], body, now=stamp)
        with pytest.raises(SignatureInvalid):
            verify_signature(secret, headers["x-hub-signature"], body + b" ", now=stamp)
        with pytest.raises(SignatureInvalid):
            verify_signature("whsec_other", headers["x-hub-signature"], body, now=stamp)
    event = json.loads(receiver.requests[0][1])
    assert event["type"] == "invoice.finalized"
    assert event["data"]["number"] == "INV-000001"
    assert event["data"]["total"] == 420
    logged = biller.ok(biller.get("/events"))["items"]
    assert [e["id"] for e in logged] == [event["id"]]
    listed = biller.ok(biller.get(f"/webhooks/{done.endpoint_id}/deliveries"))["items"]
    assert listed[0]["status"] == "delivered" and listed[0]["response_status"] == 204


def test_delivery_gives_up_after_max_attempts(
    biller: Biller, app: FastAPI, receiver: Receiver
) -> None:
    receiver.failures = 100
    register(biller, receiver.url)
    now = finalized_invoice(biller)
    for _ in range(biller.settings.delivery_max_attempts):
        assert len(deliver(biller, app, now)) == 1
        now += timedelta(seconds=biller.settings.delivery_max_backoff_seconds)
    [failed] = deliveries(biller)
    assert (failed.status, failed.attempts) == ("failed", 4)
    assert failed.last_error == "HTTP 500"
    assert deliver(biller, app, now + timedelta(days=1)) == []
    with biller.factory() as s:
        actions = s.scalars(
            select(AuditEvent.action).where(AuditEvent.tenant_id == biller.tenant_id)
        ).all()
    assert "webhook.delivery_failed" in actions


def test_private_addresses_are_refused_unless_allowed(
    biller: Biller, app: FastAPI, receiver: Receiver
) -> None:
    register(biller, receiver.url)
    close = finalized_invoice(biller)
    strict = billing_settings(webhook_allow_private=False)
    [outcome] = deliver(biller, app, close, strict)
    assert not outcome.ok and "non-public address" in str(outcome.error)
    assert receiver.requests == []


def test_only_subscribed_endpoints_get_an_event(
    biller: Biller, app: FastAPI, receiver: Receiver
) -> None:
    register(biller, receiver.url, ["entitlement.expiring"])
    finalized_invoice(biller)
    assert deliveries(biller) == []
    assert len(biller.ok(biller.get("/events"))["items"]) == 1


def test_deleting_an_endpoint_drops_its_pending_deliveries(
    biller: Biller, app: FastAPI, receiver: Receiver
) -> None:
    created = register(biller, receiver.url)
    close = finalized_invoice(biller)
    assert len(deliveries(biller)) == 1
    response = biller.client.delete(f"/api/v1/webhooks/{created['id']}", headers=biller.headers())
    assert response.status_code == 204
    assert deliveries(biller) == []
    assert deliver(biller, app, close) == []


def test_usage_threshold_events_fire_once_per_threshold(biller: Biller) -> None:
    # Cap: 1,000 api.calls a month per device, two devices: 2,000 for the account.
    now = JAN[0] + timedelta(days=10)
    biller.usage(1599, JAN[0] + timedelta(days=1))
    with biller.factory() as s:
        assert notify.check_thresholds(s, biller.tenant_id, now, (80, 100)) == 0
        s.commit()
    biller.usage(1, JAN[0] + timedelta(days=2), device=1)
    with biller.factory() as s:
        assert notify.check_thresholds(s, biller.tenant_id, now, (80, 100)) == 1
        assert notify.check_thresholds(s, biller.tenant_id, now, (80, 100)) == 0
        s.commit()
    biller.usage(400, JAN[0] + timedelta(days=3))
    with biller.factory() as s:
        assert notify.check_thresholds(s, biller.tenant_id, now, (80, 100)) == 1
        s.commit()
    events = biller.ok(biller.get("/events", type="usage.threshold_reached"))["items"]
    assert [e["payload"]["threshold_percent"] for e in events] == [80, 100]
    assert events[0]["payload"]["cap"] == 2000
    assert events[0]["payload"]["usage"] == "1600"
    assert events[0]["payload"]["period_start"].startswith("2030-01-01T00:00:00")
    # A new month starts counting afresh.
    with biller.factory() as s:
        feb = datetime(2030, 2, 3, tzinfo=JAN[0].tzinfo)
        assert notify.check_thresholds(s, biller.tenant_id, feb, (80, 100)) == 0


def test_entitlement_expiring_fires_once_within_the_lead(biller: Biller) -> None:
    ends = datetime(2031, 1, 1, tzinfo=JAN[0].tzinfo)
    lead = timedelta(days=7)
    with biller.factory() as s:
        assert notify.check_expiring(s, biller.tenant_id, ends - timedelta(days=8), lead) == 0
        assert notify.check_expiring(s, biller.tenant_id, ends - timedelta(days=7), lead) == 1
        assert notify.check_expiring(s, biller.tenant_id, ends - timedelta(days=2), lead) == 0
        s.commit()
    [event] = biller.ok(biller.get("/events", type="entitlement.expiring"))["items"]
    assert event["payload"]["entitlement_id"] == biller.entitlement_id
    assert event["payload"]["seconds_left"] == 7 * 86_400


def test_a_host_that_is_not_a_domain_name_is_refused(biller: Biller) -> None:
    long_label = "https://" + "a" * 64 + ".example.com/h"
    for url in (long_label, "http://a..b/h"):
        response = biller.post("/webhooks", {"url": url, "event_types": EVENTS})
        assert response.status_code == 422, url


def test_one_broken_endpoint_does_not_stop_the_others(
    biller: Biller, app: FastAPI, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    register(biller, receiver.url)
    register(biller, receiver.url + "?second")
    close = finalized_invoice(biller)
    real_send = delivery._send

    def send(client, job, now, allow_private):  # type: ignore[no-untyped-def]
        if "second" in job.url:
            raise UnicodeError("label too long")  # what getaddrinfo raises for bad IDNA
        return real_send(client, job, now, allow_private)

    monkeypatch.setattr(delivery, "_send", send)
    outcomes = deliver(biller, app, close)
    assert sorted(o.ok for o in outcomes) == [False, True]
    assert len(receiver.requests) == 1
    broken = [o for o in outcomes if not o.ok]
    assert broken[0].error == "internal error: UnicodeError"


def test_a_delivery_connects_to_the_address_that_was_checked(
    biller: Biller, app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DNS rebinding: the name answers a public address, then a loopback one.

    The first attempt must go to the checked public address by IP (name kept in the
    Host header and TLS SNI) without resolving again; the next attempt resolves
    afresh, sees the loopback answer and sends nothing.
    """
    answers = iter(["93.184.216.34", "127.0.0.1"])
    lookups: list[tuple[str, int]] = []

    def resolve(host: str, port: int, **kwargs: Any) -> list[tuple[Any, ...]]:
        address = "127.0.0.1"  # other tests' endpoints (the database is shared)
        if host == "hooks.example":
            lookups.append((host, port))
            address = next(answers)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]

    sent: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(503)

    monkeypatch.setattr(delivery, "_resolve", resolve)
    register(biller, "https://hooks.example:8443/in?x=1")
    close = finalized_invoice(biller)
    strict = billing_settings(webhook_allow_private=False)
    box = SecretBox(app.state.settings.keys_dir)
    [ours] = [row.id for row in deliveries(biller)]

    def attempt(now: datetime) -> Outcome:
        outcomes = deliver_due(biller.factory, lambda: now, box, strict, client=client)
        [outcome] = [o for o in outcomes if o.delivery_id == ours]
        return outcome

    with httpx.Client(transport=httpx.MockTransport(answer)) as client:
        first = attempt(close)
        assert (first.ok, first.status) == (False, 503)
        assert lookups == [("hooks.example", 8443)]
        [request] = sent
        assert str(request.url) == "https://93.184.216.34:8443/in?x=1"
        assert request.headers["host"] == "hooks.example:8443"
        assert request.extensions["sni_hostname"] == "hooks.example"
        later = close + timedelta(days=1)
        second = attempt(later)
    assert not second.ok and "non-public address (127.0.0.1)" in str(second.error)
    assert len(sent) == 1 and len(lookups) == 2


def _answers(*addresses: str) -> egress.Resolver:
    def resolve(host: str, port: int, **kwargs: Any) -> list[tuple[Any, ...]]:
        return [
            (socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
            for a in addresses
        ]

    return resolve


@pytest.mark.parametrize(
    ("answers", "refused"),
    [
        (["8.8.8.8", "10.0.0.7"], "10.0.0.7"),  # every answer must be public
        (["::ffff:127.0.0.1"], "::ffff:127.0.0.1"),  # IPv4-mapped
        (["::ffff:100.64.0.1"], "::ffff:100.64.0.1"),  # IPv4-mapped shared space (3.11: "global")
        (["fec0::1"], "fec0::1"),  # deprecated site-local
        (["ff0e::1"], "ff0e::1"),  # multicast
        (["224.0.0.1"], "224.0.0.1"),
        (["240.0.0.1"], "240.0.0.1"),  # reserved
        (["64:ff9b::7f00:1"], "64:ff9b::7f00:1"),  # NAT64 of 127.0.0.1
        (["64:ff9b::a00:1"], "64:ff9b::a00:1"),  # NAT64 of 10.0.0.1
        (["64:ff9b:1::808:808"], "64:ff9b:1::808:808"),  # local-use NAT64
        (["2002:7f00:1::"], "2002:7f00:1::"),  # 6to4 of 127.0.0.1
        (["2002:a9fe:a9fe::"], "2002:a9fe:a9fe::"),  # 6to4 of the metadata service
        (["::127.0.0.1"], "::127.0.0.1"),  # IPv4-compatible
        (["169.254.169.254"], "169.254.169.254"),
        (["fd00::1"], "fd00::1"),
    ],
)
def test_pinning_refuses_every_non_public_answer(answers: list[str], refused: str) -> None:
    target = egress.pinned_target("http://a.example/h", _answers(*answers))
    shown = ipaddress.ip_address(refused)  # in its normal form
    assert target == f"a.example resolves to a non-public address ({shown})"


def test_pinning_keeps_public_forms_and_every_address() -> None:
    nat64 = egress.pinned_target("https://a.example/h", _answers("64:ff9b::808:808", "8.8.4.4"))
    assert isinstance(nat64, egress.Target)
    assert nat64.urls == ("https://[64:ff9b::808:808]/h", "https://8.8.4.4/h")
    many = [f"8.8.8.{n}" for n in range(1, 9)]
    capped = egress.pinned_target("http://a.example/h", _answers(*many, "8.8.8.1"))
    assert isinstance(capped, egress.Target)
    assert len(capped.urls) == egress.MAX_ADDRESSES
    assert egress.pinned_target("http://a.example/h", _answers()) == (
        "cannot resolve a.example: no address"
    )
    assert str(egress.pinned_target("http://[::1/h", _answers("8.8.8.8"))).startswith("invalid URL")


def test_an_ip_literal_is_called_as_it_is_and_a_name_by_its_address() -> None:
    literal = "http://[2606:4700::1111]:8080/h"
    assert egress.pinned_target(literal, _answers("2606:4700::1111")) == egress.unpinned(literal)
    named = egress.pinned_target("https://bücher.example./h", _answers("8.8.4.4"))
    assert named == egress.Target(
        ("https://8.8.4.4/h",),
        {"Host": "xn--bcher-kva.example."},
        {"sni_hostname": "xn--bcher-kva.example"},
    )


@pytest.mark.parametrize("failure", [httpx.ConnectError, httpx.ConnectTimeout])
def test_a_failed_connection_tries_the_next_checked_address(
    biller: Biller, app: FastAPI, monkeypatch: pytest.MonkeyPatch, failure: type[Exception]
) -> None:
    tried: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        tried.append(request.url.host)
        if request.url.host == "2606:4700::1111":
            raise failure("Network is unreachable", request=request)  # type: ignore[call-arg]
        return httpx.Response(204)

    monkeypatch.setattr(delivery, "_resolve", _answers("2606:4700::1111", "1.1.1.1"))
    register(biller, "https://hooks.example/in")
    close = finalized_invoice(biller)
    [ours] = [row.id for row in deliveries(biller)]
    strict = billing_settings(webhook_allow_private=False)
    box = SecretBox(app.state.settings.keys_dir)
    with httpx.Client(transport=httpx.MockTransport(answer)) as client:
        outcomes = deliver_due(biller.factory, lambda: close, box, strict, client=client)
    [outcome] = [o for o in outcomes if o.delivery_id == ours]
    assert (outcome.ok, outcome.status) == (True, 204)
    assert tried[-2:] == ["2606:4700::1111", "1.1.1.1"]


def test_no_cookie_set_by_one_endpoint_reaches_another(
    biller: Biller, app: FastAPI, receiver: Receiver
) -> None:
    receiver.set_cookie = "session=from-the-first-endpoint; Path=/"
    register(biller, receiver.url)
    register(biller, receiver.url + "?second")
    close = finalized_invoice(biller)
    outcomes = deliver(biller, app, close)
    assert len(outcomes) == 2 and all(o.ok for o in outcomes)
    assert len(receiver.requests) == 2
    assert all("cookie" not in headers for headers, _ in receiver.requests)


def test_each_delivery_is_leased_when_its_own_attempt_starts(
    biller: Biller, app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pass over many slow endpoints never sends a delivery whose lease has run out."""
    monkeypatch.setattr(delivery, "_resolve", _answers("1.1.1.1"))
    register(biller, "https://one.example/in")
    register(biller, "https://two.example/in")
    close = finalized_invoice(biller)
    ours = [row.id for row in deliveries(biller)]
    seen: list[dict[int, datetime]] = []  # our deliveries' next attempts, at each of our sends

    def answer(request: httpx.Request) -> httpx.Response:
        if request.headers["host"] in ("one.example", "two.example"):
            rows = deliveries(biller)
            seen.append({row.id: row.next_attempt_at for row in rows if row.id in ours})
        return httpx.Response(204)

    strict = billing_settings(webhook_allow_private=False)
    lease = timedelta(seconds=delivery.attempt_bound_seconds(strict) + 30)
    box = SecretBox(app.state.settings.keys_dir)
    with httpx.Client(transport=httpx.MockTransport(answer)) as client:
        outcomes = deliver_due(biller.factory, lambda: close, box, strict, client=client)
    assert {o.delivery_id for o in outcomes if o.ok} >= set(ours)
    first, second = ours  # sent oldest first: same due time, so by id
    assert seen == [
        {first: close + lease, second: seen[0][second]},
        {first: close, second: close + lease},  # the first delivered, the second leased now
    ]
    assert seen[0][second] <= close  # not claimed while the first was being sent
