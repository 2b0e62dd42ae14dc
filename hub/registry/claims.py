"""Zero-touch provisioning: turn a device's claim into its identity.

A claim proves two things (docs/protocol.md, "Claim"):

1. the right to be this device: a batch claim token that covers the serial
   (``method = "token"``), or possession of the key the manufacturer
   pre-registered for it (``method = "key"``);
2. possession of ``pubkey``: ``sig`` is its Ed25519 signature over the request,
   bound to the claim session's client id, a fresh nonce and a timestamp
   within the skew window. Nonces are remembered, so a replay is refused.

An accepted claim stores the device key, mints MQTT credentials (only their
hash is stored), marks the device claimed and audits it, all in the caller's
transaction. Every refusal is a :class:`ClaimRefused` with a stable code.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from hub.audit.service import record
from hub.errors import ClaimRefused
from hub.registry.credentials import issue_device_credential
from hub.registry.models import ClaimBatch, ClaimNonce, Device
from hub.registry.service import (
    CLAIM_TOKEN_PREFIX,
    parse_token,
    remember_nonce,
    resolve_claim_batch,
    sha256_hex,
)
from protocols.messages import ClaimAccepted, ClaimRequest, TrustAnchor


@dataclass(frozen=True, slots=True)
class ClaimPolicy:
    """What the hub hands out and how much clock skew it tolerates."""

    anchors: tuple[TrustAnchor, ...]
    skew_seconds: int


def handle_claim(
    session: Session, *, client_id: str, request: ClaimRequest, now: datetime, policy: ClaimPolicy
) -> ClaimAccepted:
    """Check ``request`` and, if it holds, claim the device.

    A claimed device that claims again *with its own key* (its answer was lost:
    the hub crashed after the commit, or the agent timed out) gets a fresh
    credential, replacing the old one, instead of a refusal that would strand
    it; any other key is refused as ``already_claimed``.

    Raises:
        ClaimRefused: with code ``stale_request``, ``bad_proof``, ``bad_token``,
            ``token_revoked``, ``token_expired``, ``unknown_device``,
            ``already_claimed``, ``device_disabled``, ``key_in_use``,
            ``replayed_nonce`` or ``bad_method``.
    """
    if abs(request.ts - int(now.timestamp())) > policy.skew_seconds:
        raise ClaimRefused("stale_request", "claim timestamp outside the accepted window")
    _check_proof(client_id, request)
    device = _device_for(session, request, now)
    reissue = _check_claimable(session, device, request)
    remember_nonce(session, request.nonce.hex(), device.id, now)
    if not reissue:
        device.public_key = request.pubkey
        device.public_key_fingerprint = sha256_hex(request.pubkey)
        device.status = "claimed"
        device.claimed_at = now
    password = issue_device_credential(session, device, now)
    record(
        session,
        tenant_id=device.tenant_id,
        actor=f"device:{device.id}",
        action="claim.reissued" if reissue else "claim.accepted",
        target_type="device",
        target_id=device.id,
        now=now,
        detail={"serial": device.serial, "method": request.method},
    )
    return ClaimAccepted(
        device_id=device.id,
        mqtt_username=device.id,
        mqtt_password=password,
        anchors=policy.anchors,
        server_time=int(now.timestamp()),
    )


def purge_nonces(session: Session, *, now: datetime, skew_seconds: int) -> int:
    """Forget nonces too old to matter; returns how many were deleted.

    A request older than the skew window is refused on its timestamp alone, so
    a nonce only has to be remembered for twice that window.
    """
    cutoff = now - timedelta(seconds=2 * skew_seconds)
    result = session.execute(delete(ClaimNonce).where(ClaimNonce.seen_at < cutoff))
    return int(result.rowcount)  # type: ignore[attr-defined]


def _check_proof(client_id: str, request: ClaimRequest) -> None:
    try:
        Ed25519PublicKey.from_public_bytes(request.pubkey).verify(
            request.sig, request.signing_input(client_id)
        )
    except (InvalidSignature, ValueError):
        raise ClaimRefused("bad_proof", "claim signature does not verify") from None


def _device_for(session: Session, request: ClaimRequest, now: datetime) -> Device:
    if request.method == "token":
        return _device_by_token(session, request, now)
    if request.method == "key":
        device = session.scalar(
            select(Device)
            .where(Device.public_key_fingerprint == sha256_hex(request.pubkey))
            .with_for_update()
        )
        if device is None or device.serial != request.serial:
            raise ClaimRefused("unknown_device", "no device with this serial and key")
        return device
    raise ClaimRefused("bad_method", f"unknown claim method {request.method!r}")


def _device_by_token(session: Session, request: ClaimRequest, now: datetime) -> Device:
    token = request.token or ""
    parsed = parse_token(CLAIM_TOKEN_PREFIX, token)
    batch = session.get(ClaimBatch, parsed[0]) if parsed else None
    device = (
        session.scalar(
            select(Device)
            .where(Device.tenant_id == batch.tenant_id, Device.serial == request.serial)
            .with_for_update()  # two workers claiming one device: the second waits
        )
        if batch is not None
        else None
    )
    # resolve_claim_batch checks the secret in constant time even when the
    # batch or device is unknown, and refuses with one code for all of those.
    resolve_claim_batch(session, token, device.id if device else "", now)
    assert device is not None
    return device


def _check_claimable(session: Session, device: Device, request: ClaimRequest) -> bool:
    """Refuse unclaimable devices; return whether this is a re-claim with its own key."""

    def refuse(code: str, message: str) -> ClaimRefused:
        return ClaimRefused(code, message, tenant_id=device.tenant_id, target=device.id)

    if device.status == "disabled":
        raise refuse("device_disabled", "device is disabled")
    if device.status == "claimed":
        if device.public_key != request.pubkey:
            raise refuse("already_claimed", "device already claimed")
        return True
    if request.method == "token":
        holder = session.scalar(
            select(Device.id).where(Device.public_key_fingerprint == sha256_hex(request.pubkey))
        )
        if holder is not None and holder != device.id:
            raise refuse("key_in_use", "this key belongs to another device")
        if device.public_key is not None and device.public_key != request.pubkey:
            raise refuse("bad_proof", "device has a pre-registered key; claim with it")
    return False
