"""Shared builders for claim tests: a tenant with devices, and signed claim requests."""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from hub.audit.models import AuditEvent
from hub.manifests.service import ManifestPolicy
from hub.registry import service
from hub.registry.claims import ClaimPolicy, handle_claim
from hub.registry.models import ClaimNonce, Device, DeviceCredential
from hub.registry.schemas import (
    ClaimBatchCreate,
    DeviceClassCreate,
    DeviceCreate,
    DeviceUpdate,
)
from protocols.messages import ClaimAccepted, ClaimRequest, TrustAnchor, signing_input_for_claim
from provisioning.signer import Ed25519Signer
from tests.hub.conftest import make_tenant

CLIENT_ID = "claim-0123456789abcdef01234567"
SKEW = 300
ANCHORS = (
    TrustAnchor(kid=b"manifest-1", alg=-8, key=bytes(range(32)), role="manifest"),
    TrustAnchor(kid=b"firmware-1", alg=-8, key=bytes(range(32, 64)), role="firmware"),
)
POLICY = ClaimPolicy(anchors=ANCHORS, skew_seconds=SKEW)
MANIFEST_SIGNER = Ed25519Signer.generate()
MANIFEST_POLICY = ManifestPolicy(kid=MANIFEST_SIGNER.kid, sign=MANIFEST_SIGNER.sign)


def new_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def raw(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def claim_request(
    key: Ed25519PrivateKey,
    *,
    serial: str,
    ts: int,
    method: str = "token",
    token: str | None = None,
    client_id: str = CLIENT_ID,
    nonce: bytes | None = None,
    pubkey: bytes | None = None,
) -> ClaimRequest:
    """A claim request signed by ``key`` for ``client_id``."""
    pubkey = raw(key) if pubkey is None else pubkey
    nonce = secrets.token_bytes(16) if nonce is None else nonce
    signed = signing_input_for_claim(
        client_id, serial=serial, method=method, token=token, pubkey=pubkey, nonce=nonce, ts=ts
    )
    return ClaimRequest(
        serial=serial,
        method=method,
        pubkey=pubkey,
        nonce=nonce,
        ts=ts,
        sig=key.sign(signed),
        token=token,
    )


@dataclass
class Fleet:
    """A tenant with a device class, seeded through the registry services."""

    factory: sessionmaker[Session]
    tenant_id: str
    class_id: str
    now: datetime

    @classmethod
    def create(cls, factory: sessionmaker[Session], now: datetime) -> Fleet:
        tenant_id = make_tenant(factory, now).tenant_id
        with factory() as s:
            device_class = service.create_device_class(
                s, tenant_id=tenant_id, actor="test", now=now,
                data=DeviceClassCreate(
                    name="sensor",
                    vendor_id="fa6b4a53-d5ad-5fdf-be9d-e663e4d41ffe",  # type: ignore[arg-type]
                    class_id="1492af14-2569-5e48-bf42-9b2d51f2ab45",  # type: ignore[arg-type]
                ),
            )  # fmt: skip
            s.commit()
            return cls(factory, tenant_id, device_class.id, now)

    @property
    def ts(self) -> int:
        return int(self.now.timestamp())

    def device(self, serial: str, public_key: bytes | None = None) -> str:
        key_text = base64.b64encode(public_key).decode() if public_key else None
        with self.factory() as s:
            device = service.create_device(
                s, tenant_id=self.tenant_id, actor="test", now=self.now,
                data=DeviceCreate(
                    serial=serial, device_class_id=self.class_id, public_key=key_text
                ),
            )  # fmt: skip
            s.commit()
            return device.id

    def batch(self, serials: list[str], ttl_seconds: int = 3600) -> tuple[str, str]:
        """A claim batch; returns its token and id."""
        with self.factory() as s:
            batch, token, _ = service.create_claim_batch(
                s, tenant_id=self.tenant_id, actor="test", now=self.now,
                data=ClaimBatchCreate(name="lot", serials=serials, ttl_seconds=ttl_seconds),
            )  # fmt: skip
            s.commit()
            return token, batch.id

    def claim(self, request: ClaimRequest, *, now: datetime | None = None) -> ClaimAccepted:
        with self.factory() as s:
            accepted = handle_claim(
                s, client_id=CLIENT_ID, request=request, now=now or self.now, policy=POLICY
            )
            s.commit()
            return accepted

    def claimed_device(self, serial: str) -> tuple[str, str]:
        """Register ``serial`` and claim it by token; returns device id and MQTT password."""
        device_id = self.device(serial)
        token, _ = self.batch([serial])
        accepted = self.claim(claim_request(new_key(), serial=serial, token=token, ts=self.ts))
        assert accepted.device_id == device_id
        return device_id, accepted.mqtt_password

    def set_status(self, device_id: str, status: str) -> None:
        with self.factory() as s:
            service.update_device(
                s, tenant_id=self.tenant_id, actor="test", now=self.now, device_id=device_id,
                data=DeviceUpdate(status=status),  # type: ignore[arg-type]
            )  # fmt: skip
            s.commit()

    def reset_claim(self, device_id: str) -> None:
        with self.factory() as s:
            service.reset_claim(
                s, tenant_id=self.tenant_id, actor="test", now=self.now, device_id=device_id
            )
            s.commit()


def snapshot(factory: sessionmaker[Session], device_id: str) -> dict[str, Any]:
    """Everything a claim may change about a device, read in a fresh session."""
    with factory() as s:
        device = s.get_one(Device, device_id)
        return {
            "status": device.status,
            "public_key": device.public_key,
            "fingerprint": device.public_key_fingerprint,
            "claimed_at": device.claimed_at,
            "credential": s.get(DeviceCredential, device_id) is not None,
            "nonces": s.scalar(
                select(func.count())
                .select_from(ClaimNonce)
                .where(ClaimNonce.device_id == device_id)
            ),
            "accepted": s.scalar(
                select(func.count())
                .select_from(AuditEvent)
                .where(AuditEvent.action == "claim.accepted", AuditEvent.target_id == device_id)
            ),
        }
