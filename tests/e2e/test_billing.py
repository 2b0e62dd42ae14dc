"""Billing end to end: a real ``hub serve`` closes a period and invoices MQTT usage.

A claimed device (a paho client with the credentials the hub issued) publishes
usage over MQTT, some batches twice; the account's billing period ends a few
seconds into the test; the hub's own scheduled job (short settings: job every
second, 2 s of grace) closes it, finalizes the invoice and delivers the signed
``invoice.finalized`` webhook to a local receiver that refuses the first try.
The invoice equals the price of the distinct records; the audit agrees.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from hub.billing.periods import add_months
from hub.billing.signatures import verify_signature
from protocols.usage_messages import RawUsageRecord
from simulator.processes import HubProcess, wait_until
from tests.backends import postgres_url
from tests.e2e.conftest import Backend, _backends
from tests.e2e.test_usage_ingest import Device, Shop, _claim
from tests.support.pg import fresh_schema

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

LEAD = timedelta(seconds=60)  # the period ends this long after the test starts
PLAN = {
    "currency": "EUR",
    "model": "graduated",
    "tiers": [
        {"up_to": 10, "unit_price": "0.50"},
        {"up_to": None, "unit_price": "0.10", "flat_fee": "1.00"},
    ],
}
SETTINGS = {
    "HUB_BILLING_GRACE_SECONDS": "2",
    "HUB_BILLING_JOB_SECONDS": "1",
    "HUB_BILLING_DELIVERY_SECONDS": "1",
    "HUB_BILLING_DELIVERY_BACKOFF_SECONDS": "1",
    "HUB_BILLING_WEBHOOK_ALLOW_PRIVATE": "true",
}


@pytest.fixture(scope="module", params=_backends(), ids=str)
def hub(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[HubProcess]:
    backend: Backend = request.param
    data_dir: Path = tmp_path_factory.mktemp(f"billing-{backend}")
    if backend.database == "postgresql":
        base = postgres_url()
        assert base is not None
        with fresh_schema(base) as url:
            yield from _run(HubProcess(data_dir, backend.broker, url, extra_env=SETTINGS))
    else:
        yield from _run(HubProcess(data_dir, backend.broker, extra_env=SETTINGS))


def _run(hub: HubProcess) -> Iterator[HubProcess]:
    hub.start()
    try:
        yield hub
    finally:
        assert hub.stop() == 0, hub.log_tail()


@dataclass
class Receiver:
    """A webhook receiver on 127.0.0.1 that answers 503 to its first request."""

    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    port: int = 0


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            state.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
            self.send_response(503 if len(state.requests) == 1 else 200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


def _ok(response: httpx.Response) -> Any:
    assert response.status_code in (200, 201), response.text
    return response.json()


def anchor_ending_at(target: datetime) -> tuple[datetime, int]:
    """A subscription start whose period ``n - 1`` ends exactly at ``target`` (n in 1..3)."""
    for months in (1, 2, 3):
        index = target.month - 1 - months
        year, month = target.year + index // 12, index % 12 + 1
        try:
            anchor = target.replace(year=year, month=month)
        except ValueError:  # that month has no such day
            continue
        if add_months(anchor, months) == target:
            return anchor, months
    raise AssertionError(f"no anchor for {target}")  # pragma: no cover


def _shop(hub: HubProcess, receiver: Receiver, period_end: datetime) -> tuple[Shop, str]:
    api = hub.api(hub.create_tenant(f"billing-{secrets.token_hex(3)}"))
    cls = _ok(api.post("/device-classes", json={
        "name": "meter", "vendor_id": "fa6b4a53-d5ad-5fdf-be9d-e663e4d41ffe",
        "class_id": "1492af14-2569-5e48-bf42-9b2d51f2ab45",
    }))  # fmt: skip
    product = _ok(api.post("/products", json={"sku": "B-1", "name": "Billed"}))
    _ok(api.post(f"/products/{product['id']}/features", json={
        "key": "api.calls", "kind": "metered", "cap_per_period": 10**6, "period": "month",
    }))  # fmt: skip
    _ok(api.post(f"/products/{product['id']}/price-plans", json={
        "meter": "api.calls", "plan": PLAN, "active_from": "2000-01-01T00:00:00Z",
    }))  # fmt: skip
    hook = _ok(api.post("/webhooks", json={
        "url": f"http://127.0.0.1:{receiver.port}/hooks", "event_types": ["invoice.finalized"],
    }))  # fmt: skip
    account = _ok(api.post("/accounts", json={"name": "Contoso"}))
    anchor, _ = anchor_ending_at(period_end)
    ent = _ok(api.post("/entitlements", json={
        "account_id": account["id"], "product_id": product["id"],
        "license_model": "subscription", "quantity": 1, "starts_at": anchor.isoformat(),
        "ends_at": (period_end + timedelta(days=365)).isoformat(),
    }))  # fmt: skip
    return Shop(hub, api, cls["id"], ent["id"], account["id"]), hook["secret"]


def test_the_hub_closes_the_period_and_invoices_mqtt_usage(
    hub: HubProcess, receiver: Receiver
) -> None:
    period_end = (datetime.now(UTC) + LEAD).replace(microsecond=0)
    shop, secret = _shop(hub, receiver, period_end)
    accepted = _claim(shop, f"BIL-{secrets.token_hex(3)}")
    device = Device(hub, accepted.device_id, accepted.mqtt_password)
    start = int(time.time()) + 1  # after the activation, inside the period
    records = [RawUsageRecord((1, seq, "api.calls", seq % 5, start)) for seq in range(1, 31)]
    after = RawUsageRecord((1, 31, "api.calls", 100, int(period_end.timestamp())))  # next one
    device.connect()
    try:
        device.publish(records[:15])
        device.publish(records[:15])  # a replay
        device.send_until_acked(records)
        assert int(time.time()) < period_end.timestamp(), "the test ran past the period end"
        wait_until(lambda: time.time() > period_end.timestamp() + 1, timeout=90)
        device.send_until_acked([after])
    finally:
        device.close()
    quantity = sum(seq % 5 for seq in range(1, 31))

    def finalized() -> list[dict[str, Any]]:
        return list(_ok(shop.api.get("/invoices", params={"status": "finalized"}))["items"])

    wait_until(lambda: bool(finalized()), timeout=60)
    [invoice] = finalized()
    [line] = invoice["lines"]
    assert (line["kind"], Decimal(line["quantity"])) == ("usage", quantity)
    preview = _ok(shop.api.post("/billing/preview", json={"plan": PLAN, "quantity": quantity}))
    assert invoice["total"] == preview["total"] == 500 + (quantity - 10) * 10 + 100
    assert datetime.fromisoformat(invoice["period_end"]) == period_end

    wait_until(lambda: len(receiver.requests) >= 2, timeout=30)
    first, second = receiver.requests[:2]
    assert first[1] == second[1]  # the refused delivery was retried, same event
    headers, body = second
    stamp = int(headers["x-hub-signature"].split(",")[0].removeprefix("t="))
    verify_signature(secret, headers["x-hub-signature"], body, now=stamp)
    event = json.loads(body)
    assert event["type"] == "invoice.finalized"
    assert event["data"]["invoice_id"] == invoice["id"]
    assert event["data"]["total"] == invoice["total"]
    audit = _ok(shop.api.get("/billing/audit"))
    assert audit["ok"] is True, audit["differences"]
