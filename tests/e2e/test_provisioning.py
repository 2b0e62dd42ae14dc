"""Zero-touch provisioning end to end: real hub, real broker, real agent processes."""

from __future__ import annotations

import base64
import dataclasses
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocols import cbor, topics
from protocols.messages import (
    ClaimAccepted,
    ClaimRequest,
    ErrorReply,
    decode_message,
    encode_message,
    signing_input_for_claim,
)
from simulator.processes import AgentProcess, HubProcess, wait_until
from tests.support.mqtt import TestClient, claim_client_id

pytestmark = pytest.mark.e2e


@dataclass
class Tenant:
    api: httpx.Client
    class_id: str


@pytest.fixture(scope="module")
def tenant(hub: HubProcess) -> Iterator[Tenant]:
    key = hub.create_tenant(f"tenant-{secrets.token_hex(4)}")
    with hub.api(key) as api:
        cls = api.post(
            "/device-classes",
            json={
                "name": "sensor",
                "vendor_id": "fa6b4a53-d5ad-5fdf-be9d-e663e4d41ffe",
                "class_id": "1492af14-2569-5e48-bf42-9b2d51f2ab45",
            },
        )
        assert cls.status_code == 201, cls.text
        yield Tenant(api=api, class_id=cls.json()["id"])


def _register(tenant: Tenant, serial: str, public_key: bytes | None = None) -> dict:
    body = {"serial": serial, "device_class_id": tenant.class_id, "tags": ["e2e"]}
    if public_key is not None:
        body["public_key"] = base64.b64encode(public_key).decode()
    response = tenant.api.post("/devices", json=body)
    assert response.status_code == 201, response.text
    return response.json()


def _batch(tenant: Tenant, serials: list[str], ttl: int = 3600) -> str:
    response = tenant.api.post(
        "/claim-batches", json={"name": "batch", "serials": serials, "ttl_seconds": ttl}
    )
    assert response.status_code == 201, response.text
    return response.json()["token"]


def _device(tenant: Tenant, device_id: str) -> dict:
    return tenant.api.get(f"/devices/{device_id}").json()


def _by_serial(tenant: Tenant, serial: str) -> dict:
    items = tenant.api.get("/devices", params={"serial": serial}).json()["items"]
    return next(d for d in items if d["serial"] == serial)


def _raw_key() -> tuple[Ed25519PrivateKey, bytes]:
    key = Ed25519PrivateKey.generate()
    return key, key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )


def _claim_request(
    client_id: str, serial: str, key: Ed25519PrivateKey, token: str | None, ts: int | None = None
) -> ClaimRequest:
    pub = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    nonce, ts = secrets.token_bytes(16), ts if ts is not None else int(time.time())
    method = "token" if token else "key"
    sig = key.sign(
        signing_input_for_claim(
            client_id, serial=serial, method=method, token=token, pubkey=pub, nonce=nonce, ts=ts
        )
    )
    return ClaimRequest(
        serial=serial, method=method, pubkey=pub, nonce=nonce, ts=ts, sig=sig, token=token
    )


def _ask(hub: HubProcess, payload: bytes, client_id: str | None = None):
    """Publish ``payload`` on a claim session and return the hub's decoded answer."""
    client_id = client_id or claim_client_id()
    client = TestClient(client_id, password="claim")
    assert client.connect(hub.claim_port)
    try:
        assert client.subscribe(topics.claim_response(client_id))
        client.publish(topics.claim_request(client_id), payload)
        reply = client.receive(timeout=15)
        assert reply is not None, "hub did not answer the claim session"
        return decode_message(reply[1])
    finally:
        client.close()


def _agent(tmp_path: Path, hub: HubProcess, serial: str, **claim) -> AgentProcess:
    return AgentProcess(
        directory=tmp_path / serial,
        serial=serial,
        host="127.0.0.1",
        port=hub.mqtt_port,
        claim_port=hub.claim_port,
        heartbeat_seconds=2.0,
        **claim,
    )


def test_agents_claim_identity_and_report_presence(hub: HubProcess, tenant: Tenant, tmp_path: Path):
    token_serials = [f"TK-{secrets.token_hex(3)}-{i}" for i in range(3)]
    for serial in token_serials:
        _register(tenant, serial)
    token = _batch(tenant, token_serials)
    key_serial = f"KY-{secrets.token_hex(3)}"
    key = Ed25519PrivateKey.generate()
    key_file = tmp_path / "key.pem"
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    _register(
        tenant,
        key_serial,
        key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw),
    )

    agents = [_agent(tmp_path, hub, s, token=token) for s in token_serials]
    agents.append(_agent(tmp_path, hub, key_serial, key_file=key_file))
    for agent in agents:
        agent.start()
    try:

        def all_online():
            devices = [_by_serial(tenant, a.serial) for a in agents]
            return (
                devices if all(d["status"] == "claimed" and d["online"] for d in devices) else None
            )

        devices = wait_until(all_online, timeout=60, what="all agents claimed and online")
        for agent, device in zip(agents, devices, strict=True):
            state = (agent.directory / "state" / "identity.cbor").read_bytes()
            assert cbor.decode(state)["device_id"] == device["id"]
            assert device["last_seen_at"] and device["claimed_at"]
        audit = tenant.api.get("/audit", params={"action": "claim.accepted", "limit": 500}).json()[
            "items"
        ]
        assert {e["target_id"] for e in audit} >= {d["id"] for d in devices}

        # Ungraceful death: the broker publishes the last will.
        agents[0].kill()
        wait_until(lambda: not _device(tenant, devices[0]["id"])["online"], 30, what="last will")
        # Clean stop: the agent says goodbye itself.
        assert agents[1].stop() == 0
        wait_until(
            lambda: not _device(tenant, devices[1]["id"])["online"], 30, what="clean offline"
        )
        # A restarted agent keeps its identity (no second claim) and comes back online.
        agents[1].start()
        wait_until(lambda: _device(tenant, devices[1]["id"])["online"], 30, what="reconnect")
        assert (
            len(
                [
                    e
                    for e in tenant.api.get(
                        "/audit", params={"action": "claim.accepted", "target_id": devices[1]["id"]}
                    ).json()["items"]
                ]
            )
            == 1
        )
    finally:
        for agent in agents:
            agent.stop()


def test_claim_refusals_are_typed_and_audited(hub: HubProcess, tenant: Tenant):
    serial = f"RF-{secrets.token_hex(3)}"
    device = _register(tenant, serial)
    token = _batch(tenant, [serial])
    key, _ = _raw_key()

    cid = claim_client_id()
    unknown = _ask(hub, encode_message(_claim_request(cid, "NO-SUCH-SERIAL", key, token)), cid)
    assert isinstance(unknown, ErrorReply) and unknown.code == "bad_token"

    client_id = claim_client_id()
    bad_proof = _claim_request(client_id, serial, key, token)
    forged = dataclasses.replace(bad_proof, sig=bytes(64))
    answer = _ask(hub, encode_message(forged), client_id)
    assert isinstance(answer, ErrorReply) and answer.code == "bad_proof"

    stale = _claim_request(client_id, serial, key, token, ts=int(time.time()) - 3600)
    assert _ask(hub, encode_message(stale), client_id).code == "stale_request"

    # Signed for another session: replaying it on ours fails the proof.
    other = _claim_request("claim-someoneelse", serial, key, token)
    assert _ask(hub, encode_message(other), client_id).code == "bad_proof"

    good = _ask(hub, encode_message(_claim_request(client_id, serial, key, token)), client_id)
    assert isinstance(good, ClaimAccepted) and good.device_id == device["id"]
    assert {a.role for a in good.anchors} == {"manifest", "firmware"}

    other_key, _ = _raw_key()
    cid = claim_client_id()
    reused = _ask(hub, encode_message(_claim_request(cid, serial, other_key, token)), cid)
    assert isinstance(reused, ErrorReply) and reused.code == "already_claimed"

    # The device itself claiming again (its answer was lost) gets a new password.
    cid = claim_client_id()
    again = _ask(hub, encode_message(_claim_request(cid, serial, key, token)), cid)
    assert isinstance(again, ClaimAccepted) and again.device_id == device["id"]
    assert again.mqtt_password != good.mqtt_password

    refused = tenant.api.get("/audit", params={"action": "claim.refused", "limit": 500}).json()[
        "items"
    ]
    assert any(
        e["target_id"] == device["id"] and e["detail"]["code"] == "already_claimed" for e in refused
    )


def test_revoked_token_is_refused(hub: HubProcess, tenant: Tenant):
    serial = f"RV-{secrets.token_hex(3)}"
    _register(tenant, serial)
    created = tenant.api.post(
        "/claim-batches", json={"name": "to revoke", "serials": [serial], "ttl_seconds": 3600}
    ).json()
    assert tenant.api.delete(f"/claim-batches/{created['id']}").status_code == 200
    key, _ = _raw_key()
    cid = claim_client_id()
    answer = _ask(hub, encode_message(_claim_request(cid, serial, key, created["token"])), cid)
    assert isinstance(answer, ErrorReply) and answer.code == "token_revoked"


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"\xff\x00garbage", "decode_error"),
        (cbor.encode({0: 9, 1: "claim"}), "unsupported_version"),
        (cbor.encode({0: 1, 1: "claim", 2: "x"}), "invalid_message"),
        (cbor.encode({0: 1, 1: "status", 2: True}), "invalid_message"),
    ],
)
def test_bad_claim_payloads_get_typed_errors(hub: HubProcess, payload: bytes, code: str):
    answer = _ask(hub, payload)
    assert isinstance(answer, ErrorReply)
    assert answer.code == code


def test_oversize_payload_is_dropped_by_the_broker(hub: HubProcess):
    client_id = claim_client_id()
    client = TestClient(client_id, password="claim")
    assert client.connect(hub.claim_port)
    try:
        assert client.subscribe(topics.claim_response(client_id))
        client.publish(topics.claim_request(client_id), b"\xa1" + b"\x00" * 70_000)
        assert client.receive(timeout=2) is None
        client.publish(topics.claim_request(client_id), b"\x00")  # the session still works
        reply = client.receive(timeout=15)
        assert reply is not None and decode_message(reply[1]).code == "invalid_message"
    finally:
        client.close()


def test_hub_keeps_serving_after_bad_input(hub: HubProcess, tenant: Tenant):
    for payload in (b"\x00", b"\xff" * 100, cbor.encode([1, 2, 3])):
        assert isinstance(_ask(hub, payload), ErrorReply)
    serial = f"OK-{secrets.token_hex(3)}"
    _register(tenant, serial)
    token = _batch(tenant, [serial])
    key, _ = _raw_key()
    client_id = claim_client_id()
    assert isinstance(
        _ask(hub, encode_message(_claim_request(client_id, serial, key, token)), client_id),
        ClaimAccepted,
    )


def test_disabled_device_is_locked_out(hub: HubProcess, tenant: Tenant, tmp_path: Path):
    serial = f"DS-{secrets.token_hex(3)}"
    device = _register(tenant, serial)
    agent = _agent(tmp_path, hub, serial, token=_batch(tenant, [serial]))
    agent.start()
    try:
        wait_until(lambda: _device(tenant, device["id"])["online"], 60, what="agent online")
        identity = cbor.decode((agent.directory / "state" / "identity.cbor").read_bytes())
        response = tenant.api.patch(f"/devices/{device['id']}", json={"status": "disabled"})
        assert response.status_code == 200, response.text

        def login_refused() -> bool:
            probe = TestClient(identity["mqtt_username"], password=identity["mqtt_password"])
            try:
                return not probe.connect(hub.mqtt_port)
            finally:
                probe.close()

        wait_until(login_refused, 15, what="the broker refusing the disabled device's login")
        if hub.broker == "embedded":
            # The live session is closed at once; the agent's reconnects are refused.
            wait_until(lambda: "broker refused device" in agent.log_text(), 30, what="kick")
        audit = tenant.api.get("/audit", params={"target_id": device["id"]}).json()["items"]
        assert any(e["action"] == "device.update" for e in audit)
    finally:
        agent.stop()
