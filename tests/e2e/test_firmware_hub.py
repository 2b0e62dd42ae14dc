"""Firmware hub end to end: a real ``hub serve`` and broker, scripted MQTT clients as devices.

Upload over REST, a two-wave rollout to entitled devices, chunks pulled over
MQTT (with a disconnect and a resume) and a ranged HTTP download, every chunk
verified against the signed SUIT envelope with the hub's firmware trust anchor
from the claim, step reports acknowledged after commit, and the entitlement
gate: an unentitled device never gets an offer and is refused chunks and
ranges, and a device whose entitlement is revoked mid-rollout is refused too.
"""

from __future__ import annotations

import os
import queue
import secrets
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from protocols import suit, topics
from protocols.cose import CoseKey
from protocols.firmware_messages import (
    FirmwareCancel,
    FirmwareChunk,
    FirmwareChunkRequest,
    FirmwareOffer,
    FirmwareQuery,
    FirmwareReport,
    FirmwareReportAck,
)
from protocols.messages import (
    ClaimAccepted,
    ClaimRequest,
    ErrorReply,
    Message,
    decode_message,
    encode_message,
    signing_input_for_claim,
)
from simulator.processes import HubProcess, wait_until
from tests.support.mqtt import TestClient, claim_client_id

pytestmark = pytest.mark.e2e

PAYLOAD = os.urandom(40_000)
CHUNK = 4096  # ten chunks, the last one 3,136 bytes


@dataclass
class Device:
    """A scripted device: its identity and a live MQTT session that records what it gets."""

    hub: HubProcess
    device_id: str
    password: str
    anchor: CoseKey
    client: TestClient | None = None
    received: list[Message] = field(default_factory=list)
    _keys: Iterator[int] = field(default_factory=lambda: iter(range(1, 10**6)))

    def connect(self) -> None:
        self.client = TestClient(self.device_id, password=self.password)
        assert self.client.connect(self.hub.mqtt_port), f"{self.device_id} refused"
        assert self.client.subscribe(topics.device_down_filter(self.device_id))

    def disconnect(self) -> None:
        assert self.client is not None
        self.client.close()
        self.client = None

    def send(self, message: Message) -> None:
        assert self.client is not None
        self.client.publish(
            topics.device_up(self.device_id, topics.UpKind.FIRMWARE), encode_message(message)
        )

    def expect(self, kind: type[Any], timeout: float = 20.0, **match: Any) -> Any:
        """The next message of ``kind`` (matching ``match``); others are kept in ``received``."""
        assert self.client is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                _, payload = self.client.messages.get(
                    timeout=max(0.05, deadline - time.monotonic())
                )
            except queue.Empty:
                break
            message = decode_message(payload)
            self.received.append(message)
            if isinstance(message, kind) and all(
                getattr(message, k) == v for k, v in match.items()
            ):
                return message
        raise AssertionError(
            f"{self.device_id}: no {kind.__name__} {match} in {timeout}s; got {self.received[-5:]}"
        )

    def quiet(self, seconds: float) -> list[Message]:
        """Everything received during ``seconds``."""
        assert self.client is not None
        got: list[Message] = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                got.append(decode_message(self.client.messages.get(timeout=left)[1]))
            except queue.Empty:
                break
        self.received.extend(got)
        return got

    def report(self, job_id: str, step: str, **extra: Any) -> str:
        key = f"{self.device_id}-1-{next(self._keys)}"
        self.send(FirmwareReport(job_id=job_id, step=step, key=key, at=int(time.time()), **extra))
        return key

    def offers(self) -> list[FirmwareOffer]:
        return [m for m in self.received if isinstance(m, FirmwareOffer)]


@dataclass
class Setup:
    api: httpx.Client
    class_uuid: str
    vendor_uuid: str
    class_id: str
    product_id: str
    account_id: str


def _ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json()


@pytest.fixture(scope="module")
def setup(hub: HubProcess) -> Iterator[Setup]:
    with hub.api(hub.create_tenant(f"fw-{secrets.token_hex(3)}")) as api:
        vendor_uuid, class_uuid = str(uuid.uuid4()), str(uuid.uuid4())
        cls = _ok(
            api.post(
                "/device-classes",
                json={"name": "gw", "vendor_id": vendor_uuid, "class_id": class_uuid},
            ),
            201,
        )
        product = _ok(api.post("/products", json={"sku": "OTA", "name": "OTA updates"}), 201)
        account = _ok(api.post("/accounts", json={"name": "Contoso"}), 201)
        yield Setup(api, class_uuid, vendor_uuid, cls["id"], product["id"], account["id"])


def _claim(hub: HubProcess, setup: Setup, serial: str) -> Device:
    _ok(setup.api.post("/devices", json={"serial": serial, "device_class_id": setup.class_id}), 201)
    token = _ok(
        setup.api.post(
            "/claim-batches", json={"name": serial, "serials": [serial], "ttl_seconds": 600}
        ),
        201,
    )["token"]
    key = Ed25519PrivateKey.generate()
    pub = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    client_id = claim_client_id()
    nonce, ts = secrets.token_bytes(16), int(time.time())
    sig = key.sign(
        signing_input_for_claim(
            client_id, serial=serial, method="token", token=token, pubkey=pub, nonce=nonce, ts=ts
        )
    )
    request = ClaimRequest(
        serial=serial, method="token", pubkey=pub, nonce=nonce, ts=ts, sig=sig, token=token
    )
    session = TestClient(client_id, password="claim")
    assert session.connect(hub.claim_port)
    try:
        assert session.subscribe(topics.claim_response(client_id))
        session.publish(topics.claim_request(client_id), encode_message(request))
        reply = session.receive(timeout=20)
    finally:
        session.close()
    assert reply is not None
    accepted = decode_message(reply[1])
    assert isinstance(accepted, ClaimAccepted), accepted
    anchor = next(a for a in accepted.anchors if a.role == "firmware")
    device = Device(
        hub, accepted.device_id, accepted.mqtt_password, CoseKey.ed25519(anchor.kid, anchor.key)
    )
    device.connect()
    return device


def _entitle(setup: Setup, *device_ids: str) -> str:
    body = {
        "account_id": setup.account_id,
        "product_id": setup.product_id,
        "license_model": "perpetual",
        "quantity": 10,
    }
    ent = _ok(setup.api.post("/entitlements", json=body), 201)["id"]
    for device_id in device_ids:
        _ok(setup.api.post(f"/entitlements/{ent}/activations", json={"device_id": device_id}), 201)
    return str(ent)


def _verified_offer(
    device: Device, setup: Setup, *, query: bool = True
) -> tuple[FirmwareOffer, suit.SuitManifest]:
    """The device's offer (asked for with ``fw_query``, or as the engine sends it), verified."""
    if query:
        device.send(FirmwareQuery(installed_seq=0))
    offer = device.expect(FirmwareOffer, timeout=30)
    manifest, _ = suit.verify_envelope(
        offer.envelope,
        [device.anchor],
        expected_vendor=setup.vendor_uuid,
        expected_class=setup.class_uuid,
        state=suit.SuitState(),
    )
    assert offer.chunk_size == manifest.chunk_size == CHUNK
    return offer, manifest


def _pull(
    device: Device, offer: FirmwareOffer, manifest: suit.SuitManifest, start: int, stop: int
) -> dict[int, bytes]:
    """Chunks start..stop-1 over MQTT, each verified on arrival."""
    got: dict[int, bytes] = {}
    index = start
    while index < stop:
        count = min(4, stop - index)
        device.send(FirmwareChunkRequest(job_id=offer.job_id, index=index, count=count))
        for expected in range(index, index + count):
            chunk = device.expect(FirmwareChunk, job_id=offer.job_id, index=expected)
            suit.verify_chunk(manifest, chunk.index, chunk.data)
            got[chunk.index] = chunk.data
        index += count
    return got


def _install(device: Device, job_id: str) -> None:
    keys = [
        device.report(job_id, step)
        for step in ("downloaded", "verified", "installing", "rebooting")
    ]
    keys.append(device.report(job_id, "confirmed", installed_seq=1))
    acked: list[str] = []
    while not set(keys) <= set(acked):
        acked.extend(device.expect(FirmwareReportAck).keys)


def _refused(device: Device, job_id: str, code: str) -> None:
    device.send(FirmwareChunkRequest(job_id=job_id, index=0, count=1))
    error = device.expect(ErrorReply)
    assert error.code == code, error
    assert not any(isinstance(m, FirmwareChunk) and m.job_id == job_id for m in device.quiet(0.5))


def test_rollout_over_mqtt_and_http_with_the_entitlement_gate(
    hub: HubProcess, setup: Setup
) -> None:
    entitled = [_claim(hub, setup, f"FW-{secrets.token_hex(3)}-{n}") for n in range(3)]
    c = _claim(hub, setup, f"FW-{secrets.token_hex(3)}-x")  # never entitled
    # One entitlement each, so one device can lose its own mid-rollout.
    grants = {device.device_id: _entitle(setup, device.device_id) for device in entitled}
    by_id = {device.device_id: device for device in entitled}
    package = _ok(
        setup.api.post(
            "/firmware/packages",
            data={
                "device_class_id": setup.class_id,
                "version": "1.0.0",
                "chunk_size": str(CHUNK),
                "required_product_id": setup.product_id,
                "release_notes": "e2e",
            },
            files={"file": ("fw.bin", PAYLOAD, "application/octet-stream")},
        ),
        201,
    )
    assert package["chunk_count"] == 10
    created = _ok(
        setup.api.post(
            "/firmware/rollouts",
            json={
                "name": "e2e",
                "package_id": package["id"],
                "waves": [{"size": 1}, {"percent": 100}],
                "success_percent": 100,
                "device_timeout_seconds": 300,
            },
        ),
        201,
    )
    rollout = _ok(setup.api.post(f"/firmware/rollouts/{created['id']}/start"))
    assert rollout["target_count"] == 3 and rollout["skipped"] == {"not_entitled": 1}
    # Roles follow the (pseudo-random) wave plan: wave 1 pulls over MQTT; in wave 2 one
    # device downloads over HTTP and the other loses its entitlement.
    jobs = _ok(setup.api.get(f"/firmware/rollouts/{created['id']}/devices"))["items"]
    waves = {w: [by_id[j["device_id"]] for j in jobs if j["wave"] == w] for w in (0, 1)}
    assert [len(waves[0]), len(waves[1])] == [1, 2]
    (first,), (second, d) = waves[0], waves[1]

    # Wave 1 over MQTT: part of the image, a disconnect, then a resume from the last verified chunk.
    offer, manifest = _verified_offer(first, setup)
    first.report(offer.job_id, "downloading")
    got = _pull(first, offer, manifest, 0, 6)
    first.disconnect()
    first.connect()
    first.send(FirmwareQuery(installed_seq=0, job_id=offer.job_id))
    assert first.expect(FirmwareOffer).job_id == offer.job_id  # the hub resends; nothing restarts
    got |= _pull(first, offer, manifest, max(got) + 1, manifest.chunk_count)
    suit.verify_image(manifest, b"".join(got[i] for i in range(manifest.chunk_count)))
    _install(first, offer.job_id)

    # Wave 2: the other entitled device downloads over HTTP with ranges aligned to chunks.
    offer2, manifest2 = _verified_offer(second, setup)
    assert offer2.http_path is not None
    second.report(offer2.job_id, "downloading")
    image = bytearray()
    with httpx.Client(
        base_url=hub.api_url, auth=(second.device_id, second.password), timeout=10
    ) as http:
        for index in range(0, manifest2.chunk_count, 3):
            first_byte = index * CHUNK
            last_byte = min(len(PAYLOAD), (index + 3) * CHUNK) - 1
            part = http.get(offer2.http_path, headers={"Range": f"bytes={first_byte}-{last_byte}"})
            assert part.status_code == 206, part.text
            for k in range(0, len(part.content), CHUNK):
                suit.verify_chunk(manifest2, index + k // CHUNK, part.content[k : k + CHUNK])
            image += part.content
        suit.verify_image(manifest2, bytes(image))
        # Another device's job is invisible; a range past the end is unsatisfiable.
        assert http.get(offer.http_path or "").status_code == 404
        assert (
            http.get(offer2.http_path, headers={"Range": f"bytes={len(PAYLOAD)}-"}).status_code
            == 416
        )
    _install(second, offer2.job_id)

    # The device whose entitlement is revoked mid-rollout: refused on both paths.
    # No query: the engine's own offer; a query racing the revoke would cancel the job first.
    offer3, _ = _verified_offer(d, setup, query=False)
    _ok(
        setup.api.post(f"/entitlements/{grants[d.device_id]}/revoke", json={"reason": "chargeback"})
    )
    _refused(d, offer3.job_id, "not_entitled")
    with httpx.Client(base_url=hub.api_url, auth=(d.device_id, d.password), timeout=10) as http:
        refused = http.get(offer3.http_path or "", headers={"Range": "bytes=0-4095"})
        assert (refused.status_code, refused.json()["error"]) == (403, "not_entitled")
    d.send(FirmwareQuery(installed_seq=0, job_id=offer3.job_id))
    assert d.expect(FirmwareCancel, job_id=offer3.job_id).reason == "not_entitled"

    # The unentitled device: never an offer, refused chunks and ranges of others' jobs.
    c.send(FirmwareQuery(installed_seq=0))
    assert not [m for m in c.quiet(2.0) if isinstance(m, FirmwareOffer)]
    _refused(c, offer.job_id, "unknown_job")
    with httpx.Client(base_url=hub.api_url, auth=(c.device_id, c.password), timeout=10) as http:
        assert http.get(offer2.http_path, headers={"Range": "bytes=0-10"}).status_code == 404
        assert http.get(offer2.http_path, auth=(c.device_id, "wrong")).status_code == 401
    assert not c.offers()

    def finished() -> Any:
        shown = _ok(setup.api.get(f"/firmware/rollouts/{created['id']}"))
        return shown if shown["state"] == "completed" else None

    shown = wait_until(finished, 30, what="rollout completed")
    assert shown["counts"] == {"cancelled": 1, "confirmed": 2}
    for device in (first, second):
        firmware = _ok(setup.api.get(f"/devices/{device.device_id}/firmware"))
        assert (firmware["installed_version"], firmware["installed_seq"]) == ("1.0.0", 1)
    for device in (*entitled, c):
        device.disconnect()
