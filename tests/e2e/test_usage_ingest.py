"""Usage ingestion end to end: a real ``hub serve``, a real broker, MQTT devices.

The devices are paho clients logged in with the credentials the hub issued at
claim time (through a real claim session), publishing ``usage_batch``
messages on their own ``d/{id}/up/usage`` topic and reading ``usage_ack`` on
``d/{id}/down/usage_ack``, as the agent's metering component does.
"""

from __future__ import annotations

import random
import secrets
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from protocols import topics
from protocols.messages import (
    ClaimAccepted,
    ClaimRequest,
    decode_message,
    encode_message,
    signing_input_for_claim,
)
from protocols.usage_messages import RawUsageRecord, UsageAck, UsageBatch
from simulator.processes import HubProcess
from tests.support.mqtt import TestClient, claim_client_id

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

Key = tuple[int, int]
WAIT = 20.0


def _ok(response: httpx.Response) -> Any:
    assert response.status_code in (200, 201), response.text
    return response.json()


@dataclass
class Shop:
    """A tenant with a metered product, an account and claimed, activated devices."""

    hub: HubProcess
    api: httpx.Client
    class_id: str
    entitlement_id: str
    account_id: str


@pytest.fixture(scope="module")
def shop(hub: HubProcess) -> Iterator[Shop]:
    with hub.api(hub.create_tenant(f"usage-{secrets.token_hex(3)}")) as api:
        cls = _ok(api.post("/device-classes", json={
            "name": "meter", "vendor_id": "fa6b4a53-d5ad-5fdf-be9d-e663e4d41ffe",
            "class_id": "1492af14-2569-5e48-bf42-9b2d51f2ab45",
        }))  # fmt: skip
        product = _ok(api.post("/products", json={"sku": "M-1", "name": "Metered"}))
        _ok(api.post(f"/products/{product['id']}/features", json={
            "key": "api.calls", "kind": "metered", "cap_per_period": 10**9, "period": "month",
        }))  # fmt: skip
        account = _ok(api.post("/accounts", json={"name": "Contoso"}))
        ent = _ok(api.post("/entitlements", json={
            "account_id": account["id"], "product_id": product["id"],
            "license_model": "perpetual", "quantity": 10,
        }))  # fmt: skip
        yield Shop(hub, api, cls["id"], ent["id"], account["id"])


def _claim(shop: Shop, serial: str) -> ClaimAccepted:
    """Register ``serial``, claim it over a real claim session, activate the entitlement."""
    _ok(shop.api.post("/devices", json={"serial": serial, "device_class_id": shop.class_id}))
    token = _ok(shop.api.post("/claim-batches", json={
        "name": serial, "serials": [serial], "ttl_seconds": 600,
    }))["token"]  # fmt: skip
    key = Ed25519PrivateKey.generate()
    pub = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    client_id, nonce, ts = claim_client_id(), secrets.token_bytes(16), int(time.time())
    signed = signing_input_for_claim(
        client_id, serial=serial, method="token", token=token, pubkey=pub, nonce=nonce, ts=ts
    )
    request = ClaimRequest(serial=serial, method="token", pubkey=pub, nonce=nonce, ts=ts,
                           sig=key.sign(signed), token=token)  # fmt: skip
    client = TestClient(client_id, password="claim")
    assert client.connect(shop.hub.claim_port)
    try:
        assert client.subscribe(topics.claim_response(client_id))
        client.publish(topics.claim_request(client_id), encode_message(request))
        reply = client.receive(timeout=WAIT)
    finally:
        client.close()
    assert reply is not None, "no claim answer"
    accepted = decode_message(reply[1])
    assert isinstance(accepted, ClaimAccepted), accepted
    _ok(shop.api.post(f"/entitlements/{shop.entitlement_id}/activations",
                      json={"device_id": accepted.device_id}))  # fmt: skip
    return accepted


@dataclass
class Device:
    """A claimed device that meters: publishes batches, keeps what is not acknowledged."""

    hub: HubProcess
    device_id: str
    password: str
    client: TestClient | None = None
    codes: dict[Key, list[str]] = field(default_factory=dict)

    def connect(self) -> None:
        self.close()
        self.client = TestClient(self.device_id, password=self.password)
        assert self.client.connect(self.hub.mqtt_port), f"connack {self.client.connack}"
        assert self.client.subscribe(f"d/{self.device_id}/down/#")

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None

    def publish(self, records: list[RawUsageRecord], topic_device: str | None = None) -> None:
        assert self.client is not None
        topic = topics.device_up(topic_device or self.device_id, topics.UpKind.USAGE)
        self.client.publish(topic, encode_message(UsageBatch(records=tuple(records))))

    def collect(self, wanted: set[Key], timeout: float) -> None:
        """Read acks until every key of ``wanted`` has a code, or ``timeout``."""
        assert self.client is not None
        deadline = time.monotonic() + timeout
        while not wanted <= self.codes.keys() and time.monotonic() < deadline:
            message = self.client.receive(timeout=max(0.05, deadline - time.monotonic()))
            if message is None:
                break
            topic, payload = message
            if not topic.endswith("/down/usage_ack"):
                continue
            ack = decode_message(payload)
            assert isinstance(ack, UsageAck)
            for result in ack.results:
                self.codes.setdefault(result.key, []).append(result.code)

    def send_until_acked(self, records: list[RawUsageRecord], timeout: float = 90) -> None:
        """The agent's loop: publish what has no code yet, in batches, until all are acked."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pending = [r for r in records if r.key not in self.codes]
            if not pending:
                return
            for start in range(0, len(pending), 50):
                self.publish(pending[start : start + 50])
            self.collect({r.key for r in pending}, timeout=WAIT)
        raise AssertionError(f"{len([r for r in records if r.key not in self.codes])} unacked")


def _export(shop: Shop, device_id: str) -> list[dict[str, Any]]:
    response = shop.api.get(
        "/usage/export",
        params={"format": "json", "device_id": device_id, "start": "2000-01-01T00:00:00Z",
                "end": "2100-01-01T00:00:00Z"},
    )  # fmt: skip
    return list(_ok(response))


def _records(rng: random.Random, epoch: int, count: int, now: int) -> dict[RawUsageRecord, Decimal]:
    truth = {}
    for seq in range(1, count + 1):
        quantity = rng.choice([1, 3, 0.5, 0.25, 12.125])
        # recorded after the activation (which preceded ``now``), within the skew window
        raw = RawUsageRecord((epoch, seq, "api.calls", quantity, now + seq % 60))
        truth[raw] = Decimal(repr(quantity))
    return truth


def test_exactly_once_with_duplicates_and_a_hub_restart(shop: Shop) -> None:
    accepted = _claim(shop, f"USE-{secrets.token_hex(3)}")
    device = Device(shop.hub, accepted.device_id, accepted.mqtt_password)
    rng = random.Random(7)
    now = int(time.time())
    first = _records(rng, epoch=1, count=200, now=now)
    second = _records(rng, epoch=2, count=100, now=now)  # the agent restarted
    records = list(first)
    device.connect()
    try:
        # 1. batches of 50, each published twice: every record acked, duplicates as such
        for start in range(0, 100, 50):
            batch = records[start : start + 50]
            device.publish(batch)
            device.publish(batch)
        device.collect({r.key for r in records[:100]}, timeout=WAIT)
        # 2. more batches in flight, and the hub stops (SIGTERM) under them
        for start in range(100, 200, 25):
            device.publish(records[start : start + 25])
        assert shop.hub.stop() == 0, shop.hub.log_tail()
        device.collect({r.key for r in records}, timeout=0.5)  # whatever made it out
    finally:
        device.close()
    shop.hub.start()
    device.connect()
    try:
        # 3. the agent replays everything unacknowledged, plus a new boot epoch
        device.send_until_acked(records + list(second))
        # 4. a replay of acknowledged records, long after: still duplicates
        device.codes.clear()
        device.send_until_acked(records[:60])
        assert Counter(c for codes in device.codes.values() for c in codes) == Counter(duplicate=60)
    finally:
        device.close()
    truth = {**first, **second}
    exported = _export(shop, accepted.device_id)
    stored = {(r["boot_epoch"], r["seq"]): Decimal(r["quantity"]) for r in exported}
    assert len(exported) == len(truth)
    assert stored == {raw.key: quantity for raw, quantity in truth.items()}
    assert {r["account_id"] for r in exported} == {shop.account_id}
    total = _ok(shop.api.get("/usage", params={"device_id": accepted.device_id, "group_by": ""}))
    assert Decimal(total["items"][0]["value"]) == sum(truth.values())
    gaps = _ok(shop.api.get("/usage/gaps", params={"device_id": accepted.device_id, "open": True}))
    assert gaps["total"] == 0


def test_acks_carry_every_code_and_only_committed_records(shop: Shop) -> None:
    accepted = _claim(shop, f"USE-{secrets.token_hex(3)}")
    device = Device(shop.hub, accepted.device_id, accepted.mqtt_password)
    now = int(time.time())
    batch = [
        RawUsageRecord((1, 1, "api.calls", 2, now)),
        RawUsageRecord((1, 2, "api.calls", -1, now)),  # rejected
        RawUsageRecord((1, 3, "nope", 1, now)),  # unknown meter
        RawUsageRecord((1, 4, "api.calls", 1, now + 3600)),  # quarantined
        RawUsageRecord((1, 1, "api.calls", 5, now)),  # same key, other content
    ]
    device.connect()
    try:
        device.publish(batch)
        device.collect({(1, s) for s in range(1, 5)}, timeout=WAIT)
    finally:
        device.close()
    assert device.codes == {
        (1, 1): ["stored", "conflict"],
        (1, 2): ["rejected"],
        (1, 3): ["rejected"],
        (1, 4): ["quarantined"],
    }
    stored = _export(shop, accepted.device_id)
    assert [(r["seq"], r["quantity"]) for r in stored] == [(1, "2")]
    conflicts = _ok(shop.api.get("/usage/conflicts", params={"device_id": accepted.device_id}))
    assert [c["quantity"] for c in conflicts["items"]] == ["5"]


def test_a_device_cannot_publish_usage_for_another(shop: Shop) -> None:
    victim = _claim(shop, f"USE-{secrets.token_hex(3)}")
    thief = _claim(shop, f"USE-{secrets.token_hex(3)}")
    device = Device(shop.hub, thief.device_id, thief.mqtt_password)
    now = int(time.time())
    forged = [RawUsageRecord((1, seq, "api.calls", 1000, now)) for seq in range(1, 11)]
    sentinel = [RawUsageRecord((9, 1, "api.calls", 1, now))]
    device.connect()
    try:
        device.publish(forged, topic_device=victim.device_id)  # refused by the broker
        try:
            device.publish(sentinel)
        except (AssertionError, RuntimeError):  # pragma: no cover - a broker that hangs up
            device.connect()
            device.publish(sentinel)
        device.collect({(9, 1)}, timeout=WAIT)
        if (9, 1) not in device.codes:  # the broker closed the session on the forgery
            device.connect()
            device.publish(sentinel)
            device.collect({(9, 1)}, timeout=WAIT)
        assert device.codes.get((9, 1)) == ["stored"]
        time.sleep(1.0)  # a forged message, had it passed, would be in by now
    finally:
        device.close()
    assert _export(shop, victim.device_id) == []
    assert [(r["boot_epoch"], r["seq"]) for r in _export(shop, thief.device_id)] == [(9, 1)]
    victim_gaps = _ok(shop.api.get("/usage/gaps", params={"device_id": victim.device_id}))
    assert victim_gaps["total"] == 0
