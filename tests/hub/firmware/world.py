"""A firmware test world: tenant, class, gated product, account, claimed devices, engine, router.

Everything is seeded over the REST API (packages, entitlements, rollouts) or
the registry services (claims), and device traffic goes through the real
:class:`hub.inbound.InboundRouter` with the plugin's firmware handler.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from hub.firmware.blobs import LocalBlobStore
from hub.firmware.delivery import FirmwareHandler
from hub.inbound import InboundRouter
from hub.mqtt.outbound import Inbound, Outbound
from hub.rollouts.engine import RolloutEngine
from protocols import suit, topics
from protocols.cose import CoseKey
from protocols.messages import Message, decode_message, encode_message
from provisioning.signer import Ed25519Signer
from tests.hub.conftest import Clock, TenantKeys, make_tenant
from tests.hub.fleet import MANIFEST_POLICY, POLICY, Fleet

API = "/api/v1"
MAX_TEST_BYTES = 256 * 1024


@dataclass
class World:
    """One tenant's firmware setting."""

    app: FastAPI
    client: TestClient
    factory: sessionmaker[Session]
    clock: Clock
    tenant: TenantKeys
    store: LocalBlobStore
    signer: Ed25519Signer
    class_id: str
    vendor_uuid: str
    class_uuid: str
    product_id: str
    account_id: str
    published: list[Outbound] = field(default_factory=list)
    devices: set[str] = field(default_factory=set)
    _entitlement: str | None = None
    _serial: int = 0

    # --- REST -------------------------------------------------------------------------------

    def headers(self, role: str = "operator") -> dict[str, str]:
        return self.tenant.headers(role)

    def post(self, path: str, body: Any = None, role: str = "operator") -> Any:
        return self.client.post(API + path, json=body, headers=self.headers(role))

    def get(self, path: str, role: str = "viewer", **params: Any) -> Any:
        return self.client.get(API + path, params=params, headers=self.headers(role))

    @staticmethod
    def ok(response: Any, status: int = 200) -> Any:
        assert response.status_code == status, response.text
        return response.json()

    def upload(
        self,
        version: str,
        payload: bytes | None = None,
        *,
        role: str = "operator",
        class_id: str | None = None,
        **fields: Any,
    ) -> Any:
        data = {"device_class_id": class_id or self.class_id, "version": version}
        data.update({k: str(v) for k, v in fields.items() if v is not None})
        body = os.urandom(5000) if payload is None else payload
        return self.client.post(
            API + "/firmware/packages",
            data=data,
            files={"file": ("fw.bin", body, "application/octet-stream")},
            headers=self.headers(role),
        )

    def package(
        self, version: str, payload: bytes | None = None, *, gated: bool = True, **fields: Any
    ) -> dict[str, Any]:
        if gated:
            fields.setdefault("required_product_id", self.product_id)
        fields.setdefault("chunk_size", 1024)
        return dict(self.ok(self.upload(version, payload, **fields), 201))

    def payload_of(self, package: dict[str, Any]) -> bytes:
        from hub.firmware.models import FirmwarePackage

        with self.factory() as s:
            row = s.get_one(FirmwarePackage, package["id"])
            return self.store.read_range(row.blob_key, 0, row.size)

    def manifest(self, envelope: bytes) -> suit.SuitManifest:
        key = CoseKey.ed25519(self.signer.kid, self.signer.public_key_bytes())
        return suit.inspect_envelope(envelope, [key])

    # --- devices and entitlements -----------------------------------------------------------

    def other_class(self) -> str:
        """Another device class of this tenant (same vendor, another class id)."""
        body = {"name": "other", "vendor_id": self.vendor_uuid, "class_id": str(uuid.uuid4())}
        return str(self.ok(self.post("/device-classes", body), 201)["id"])

    def fleet(self, class_id: str | None = None) -> Fleet:
        return Fleet(self.factory, self.tenant.tenant_id, class_id or self.class_id, self.clock.now)

    def device(
        self, *, tags: list[str] | None = None, entitled: bool = True, class_id: str | None = None
    ) -> tuple[str, str]:
        """A claimed device (id, MQTT password), entitled to the product unless told otherwise."""
        self._serial += 1
        serial = f"FW-{uuid.uuid4().hex[:8]}-{self._serial}"
        device_id, password = self.fleet(class_id).claimed_device(serial)
        self.devices.add(device_id)
        if tags:
            self.ok(
                self.client.patch(
                    f"{API}/devices/{device_id}", json={"tags": tags}, headers=self.headers()
                )
            )
        if entitled:
            self.entitle(device_id)
        return device_id, password

    def entitlement(self) -> str:
        if self._entitlement is None:
            body = {
                "account_id": self.account_id,
                "product_id": self.product_id,
                "license_model": "perpetual",
                "quantity": 10_000,
            }
            self._entitlement = str(self.ok(self.post("/entitlements", body), 201)["id"])
        return self._entitlement

    def entitle(self, device_id: str) -> None:
        self.ok(
            self.post(f"/entitlements/{self.entitlement()}/activations", {"device_id": device_id}),
            201,
        )

    def revoke_all(self) -> None:
        self.ok(self.post(f"/entitlements/{self.entitlement()}/revoke", {"reason": "test"}))
        self._entitlement = None  # later grants go through a new entitlement

    # --- rollouts ---------------------------------------------------------------------------

    def rollout(self, package_id: str, **body: Any) -> dict[str, Any]:
        created = self.ok(
            self.post("/firmware/rollouts", {"name": "r", "package_id": package_id, **body}), 201
        )
        return dict(created)

    def start(self, package_id: str, **body: Any) -> dict[str, Any]:
        created = self.rollout(package_id, **body)
        return dict(self.ok(self.post(f"/firmware/rollouts/{created['id']}/start")))

    def show(self, rollout_id: str) -> dict[str, Any]:
        return dict(self.ok(self.get(f"/firmware/rollouts/{rollout_id}")))

    def jobs(self, rollout_id: str, **params: Any) -> list[dict[str, Any]]:
        page = self.ok(self.get(f"/firmware/rollouts/{rollout_id}/devices", limit=500, **params))
        return list(page["items"])

    def job_of(self, rollout_id: str, device_id: str) -> dict[str, Any]:
        return next(j for j in self.jobs(rollout_id) if j["device_id"] == device_id)

    def engine(self) -> RolloutEngine:
        return RolloutEngine(
            session_factory=self.factory, clock=self.clock, publish=self.published.extend
        )

    def tick(self) -> list[tuple[str, Message]]:
        """One engine pass; what it published to this world's devices, as (device id, message).

        The database is shared by a module's tests, so the pass also serves
        other tests' rollouts; their messages are left out.
        """
        start = len(self.published)
        self.engine().run()
        return [(d, m) for d, m in decode_all(self.published[start:]) if d in self.devices]

    # --- device traffic ---------------------------------------------------------------------

    def router(self, handler: FirmwareHandler | None = None) -> InboundRouter:
        return InboundRouter(
            session_factory=self.factory,
            claim_policy=POLICY,
            manifest_policy=MANIFEST_POLICY,
            clock=self.clock,
            max_payload_bytes=64 * 1024,
            handlers=[handler or FirmwareHandler(store=self.store)],
        )

    def send(
        self, *messages: tuple[str, Message], handler: FirmwareHandler | None = None
    ) -> list[tuple[str, Message]]:
        """Deliver device messages in one batch; returns the replies, decoded."""
        batch = [
            Inbound(topics.device_up(device_id, topics.UpKind.FIRMWARE), encode_message(message))
            for device_id, message in messages
        ]
        return decode_all(self.router(handler).handle_batch(batch).outbound)

    def drain(self, handler: FirmwareHandler) -> list[tuple[str, Message]]:
        """What the adapter does when no message waits: serve the held-over requests."""
        return decode_all(self.router(handler).serve_backlog().outbound)


def decode_all(out: list[Outbound]) -> list[tuple[str, Message]]:
    """(device id, message) of each publish."""
    result = []
    for item in out:
        parsed = topics.parse(item.topic)
        assert isinstance(parsed, topics.DeviceTopic)
        result.append((parsed.device_id, decode_message(item.payload)))
    return result


def of_type(replies: list[tuple[str, Message]], kind: type[Any]) -> list[Any]:
    return [message for _, message in replies if isinstance(message, kind)]


def make_world(
    app: FastAPI, client: TestClient, factory: sessionmaker[Session], clock: Clock, tmp_path: Path
) -> World:
    """A tenant with a class, a product with feature ``ota``, an account; test signer and store."""
    signer = Ed25519Signer.generate()
    store = LocalBlobStore(tmp_path / "blobs")
    app.state.firmware_signer = signer
    app.state.firmware_blobs = store
    app.state.firmware_max_bytes = MAX_TEST_BYTES
    tenant = make_tenant(factory, clock.now)
    h = tenant.headers("operator")
    vendor_uuid, class_uuid = str(uuid.uuid4()), str(uuid.uuid4())
    cls = World.ok(
        client.post(
            f"{API}/device-classes",
            json={"name": "gw", "vendor_id": vendor_uuid, "class_id": class_uuid},
            headers=h,
        ),
        201,
    )
    product = World.ok(
        client.post(f"{API}/products", json={"sku": "OTA", "name": "OTA"}, headers=h), 201
    )
    World.ok(
        client.post(
            f"{API}/products/{product['id']}/features",
            json={"key": "ota", "kind": "flag"},
            headers=h,
        ),
        201,
    )
    account = World.ok(client.post(f"{API}/accounts", json={"name": "Contoso"}, headers=h), 201)
    return World(
        app=app,
        client=client,
        factory=factory,
        clock=clock,
        tenant=tenant,
        store=store,
        signer=signer,
        class_id=cls["id"],
        vendor_uuid=vendor_uuid,
        class_uuid=class_uuid,
        product_id=product["id"],
        account_id=account["id"],
    )
