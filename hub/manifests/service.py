"""Issuing, delivering and tracking signed feature manifests.

Each claimed device has at most one current manifest (``device_manifests``).
Issuing computes the device's effective features and lease from its
entitlements, bumps the per-device sequence, signs once with the hub's manifest
key and returns the delivery to publish *after* the caller commits. A device's
acknowledgement moves the delivery to ``acknowledged`` (or ``failed`` when it
rejected it); unacknowledged deliveries are resent a bounded number of times.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import NamedTuple

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from hub.entitlements.grants import (
    Rights,
    RightsMemo,
    chunks,
    device_features,
    load_grants_for_devices,
)
from hub.manifests.models import DeviceManifest
from hub.mqtt.outbound import Outbound
from hub.registry.models import Device
from protocols import topics
from protocols.cose import decode_sign1
from protocols.manifest import FeatureEntry, FeatureManifest, sign_manifest
from protocols.messages import Hello, ManifestAck, ManifestDelivery, encode_message
from protocols.rotation import decode_rotation

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RotationStep:
    """One signed rotation document and the key ids it retires."""

    signed: bytes
    retired: frozenset[str]

    @classmethod
    def from_signed(cls, signed: bytes) -> RotationStep:
        """Read the retired key ids out of a signed rotation document."""
        payload = decode_sign1(signed).payload or b""
        return cls(
            signed=signed, retired=frozenset(k.hex() for k in decode_rotation(payload).retired)
        )


@dataclass(frozen=True, slots=True)
class ManifestPolicy:
    """How manifests are signed, how long their leases run, how hard delivery tries.

    ``rotations`` are the manifest-key rotations so far, oldest first; a device
    still on an older key receives the ones it lacks with its next manifest.
    """

    kid: bytes
    sign: Callable[[bytes], bytes]
    lease_seconds: int = 3 * 86_400
    renew_before_seconds: int = 86_400
    ack_timeout_seconds: int = 60
    max_attempts: int = 5
    rotations: tuple[RotationStep, ...] = ()

    def rotations_after(self, acknowledged_kid: str | None) -> tuple[bytes, ...]:
        """The rotation documents a device whose last acknowledged key is this needs."""
        if not self.rotations or acknowledged_kid == self.kid.hex():
            return ()
        for index, step in enumerate(self.rotations):
            if acknowledged_kid in step.retired:
                return tuple(s.signed for s in self.rotations[index:])
        # Unknown (never acknowledged): all of them; the device skips what it has.
        return tuple(s.signed for s in self.rotations)


def features_hash(features: dict[str, FeatureEntry]) -> str:
    """A stable digest of a feature set, to tell whether a re-issue changes anything."""
    canonical = json.dumps({k: asdict(v) for k, v in sorted(features.items())}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def issue(
    session: Session, device_ids: Iterable[str], *, now: datetime, policy: ManifestPolicy
) -> list[Outbound]:
    """Issue a fresh manifest to every claimed device in ``device_ids``.

    Devices that are unknown, unclaimed or disabled are skipped: they are not
    allowed to hold a manifest. The devices, their manifest rows and their
    grants are read with a few ``IN (...)`` queries per chunk of ids; features
    and lease are computed once per distinct set of grants; every manifest is
    signed (each names its device and sequence); the rows are written by one
    flush at the end.
    """
    wanted = sorted(set(device_ids))
    if not wanted:
        return []
    devices, current = _load_targets(session, wanted)
    loaded = load_grants_for_devices(session, [d.id for d in devices])
    rights = RightsMemo(now, policy.lease_seconds)
    hashes: dict[Hashable, str] = {}
    out: list[Outbound] = []
    with session.no_autoflush:
        for device in devices:
            granted = rights(loaded[device.id])
            if granted.key not in hashes:
                hashes[granted.key] = features_hash(granted.features)
            row = current.get(device.id)
            digest = hashes[granted.key]
            out.append(
                _issue_one(
                    session, device, row, rights=granted, digest=digest, now=now, policy=policy
                )
            )
    session.flush()
    return out


class _Target(NamedTuple):
    """A claimed device to issue to (only what issuing reads)."""

    id: str
    tenant_id: str


def _load_targets(
    session: Session, wanted: list[str]
) -> tuple[list[_Target], dict[str, DeviceManifest]]:
    """The claimed devices among ``wanted`` and their current manifest rows."""
    devices: list[_Target] = []
    current: dict[str, DeviceManifest] = {}
    for chunk in chunks(wanted):
        devices.extend(
            _Target(device_id, tenant_id)
            for device_id, tenant_id in session.execute(
                select(Device.id, Device.tenant_id).where(
                    Device.id.in_(chunk), Device.status == "claimed"
                )
            )
        )
        current.update(
            (row.device_id, row)
            for row in session.scalars(
                select(DeviceManifest).where(DeviceManifest.device_id.in_(chunk))
            )
        )
    return devices, current


def _issue_one(
    session: Session,
    device: _Target,
    row: DeviceManifest | None,
    *,
    rights: Rights,
    digest: str,
    now: datetime,
    policy: ManifestPolicy,
) -> Outbound:
    not_after = max(rights.not_after, now + timedelta(seconds=1))
    manifest = FeatureManifest(
        device_id=device.id,
        seq=(row.seq + 1) if row is not None else 1,
        issued_at=int(now.timestamp()),
        not_after=int(not_after.timestamp()),
        features=dict(rights.features),
    )
    signed = sign_manifest(manifest, kid=policy.kid, sign=policy.sign)
    if row is None:
        row = DeviceManifest(device_id=device.id, tenant_id=device.tenant_id)
        session.add(row)
    row.seq = manifest.seq
    row.issued_at = now
    row.not_after = not_after
    row.features_hash = digest
    row.kid = policy.kid.hex()
    row.signed = signed
    _mark_sent(row, now, attempts=1)
    return _delivery(device.id, signed, policy.rotations_after(row.acknowledged_kid))


def _mark_sent(row: DeviceManifest, now: datetime, *, attempts: int) -> None:
    row.delivery_state = "pending"
    row.attempts = attempts
    row.delivered_at = None
    row.acknowledged_at = None
    row.failure = None
    row.updated_at = now


def _delivery(device_id: str, signed: bytes, rotations: tuple[bytes, ...]) -> Outbound:
    message = ManifestDelivery(signed=signed, rotations=rotations or None)
    return Outbound(
        topics.device_down(device_id, topics.DownKind.MANIFEST),
        encode_message(message),
        track=device_id,
    )


def current_seq(session: Session, device_id: str) -> int:
    """The sequence of the device's current manifest (0: none issued)."""
    row = session.get(DeviceManifest, device_id)
    return row.seq if row is not None else 0


def on_hello(
    session: Session, *, device_id: str, hello: Hello, now: datetime, policy: ManifestPolicy
) -> list[Outbound]:
    """A device connected: bring it to the hub's truth.

    A device without a manifest, or whose rights changed since its manifest was
    issued (e.g. a change whose re-issue was lost in a crash), or whose lease is
    due for renewal, gets a new one; a device holding an older sequence gets the
    current one again.
    """
    row = session.get(DeviceManifest, device_id)
    if row is None or _stale(session, row, now, policy):
        return issue(session, [device_id], now=now, policy=policy)
    if hello.manifest_seq != row.seq:
        _mark_sent(row, now, attempts=row.attempts + 1)
        return [_delivery(device_id, row.signed, policy.rotations_after(row.acknowledged_kid))]
    return []


def _stale(session: Session, row: DeviceManifest, now: datetime, policy: ManifestPolicy) -> bool:
    if row.kid != policy.kid.hex():
        return True  # signed by a key that has since been rotated out
    if row.not_after - now <= timedelta(seconds=policy.renew_before_seconds):
        return True
    return features_hash(device_features(session, row.device_id, now)) != row.features_hash


def handle_ack(session: Session, *, device_id: str, ack: ManifestAck, now: datetime) -> None:
    """Record what the device did with its manifest.

    An ``accepted``/``unchanged`` ack names the sequence it stored; one for an
    older sequence is ignored. A ``rejected`` ack names the sequence the device
    *holds*: if that is already the current one, a stray duplicate was refused
    and nothing failed.
    """
    _apply_ack(session.get(DeviceManifest, device_id), device_id, ack, now)


def handle_acks(
    session: Session, acks: Sequence[tuple[str, ManifestAck]], *, now: datetime
) -> None:
    """Record many acks, in order, as :func:`handle_ack` would one by one.

    The manifest rows are read with one query per chunk of device ids; the
    updates are left to the session's next flush.

    Args:
        session: the batch's session.
        acks: ``(device_id, ack)`` pairs in arrival order (a device may repeat).
        now: the batch's time.
    """
    ids = sorted({device_id for device_id, _ in acks})
    rows: dict[str, DeviceManifest] = {}
    for chunk in chunks(ids):
        rows.update(
            (row.device_id, row)
            for row in session.scalars(
                select(DeviceManifest).where(DeviceManifest.device_id.in_(chunk))
            )
        )
    for device_id, ack in acks:
        _apply_ack(rows.get(device_id), device_id, ack, now)


def _apply_ack(row: DeviceManifest | None, device_id: str, ack: ManifestAck, now: datetime) -> None:
    """Check ``ack`` against the device's row, then update the row (nothing here raises)."""
    if row is None or ack.seq > row.seq:
        log.warning("ack of unknown seq %d from %s", ack.seq, device_id)
        return
    if (ack.status == "rejected") == (ack.seq == row.seq):
        log.info("ignoring %s ack of seq %d from %s", ack.status, ack.seq, device_id)
        return
    row.updated_at = now
    if ack.status == "rejected":
        row.delivery_state = "failed"
        row.failure = ack.reason or "rejected by the device"
        log.warning("device %s rejected manifest %d: %s", device_id, row.seq, row.failure)
        return
    row.delivery_state = "acknowledged"
    row.acknowledged_at = now
    row.acknowledged_kid = row.kid
    row.acknowledged_signed = row.signed


def mark_delivered(session: Session, device_ids: Iterable[str], *, now: datetime) -> None:
    """The broker acknowledged these deliveries (QoS 1 PUBACK).

    One ``UPDATE ... WHERE device_id IN (...)`` per chunk of ids; rows already
    loaded in ``session`` are updated too.
    """
    ids = sorted(set(device_ids))
    for chunk in chunks(ids):
        session.execute(
            update(DeviceManifest)
            .where(DeviceManifest.device_id.in_(chunk), DeviceManifest.delivery_state == "pending")
            .values(delivery_state="delivered", delivered_at=now)
        )


def renew_due(
    session: Session, *, now: datetime, policy: ManifestPolicy, limit: int = 1000
) -> list[Outbound]:
    """Re-issue manifests whose lease ends within the renewal window."""
    due = session.scalars(
        select(DeviceManifest.device_id)
        .where(DeviceManifest.not_after <= now + timedelta(seconds=policy.renew_before_seconds))
        .order_by(DeviceManifest.not_after)
        .limit(limit)
    ).all()
    return issue(session, due, now=now, policy=policy)


def retry_unacknowledged(
    session: Session, *, now: datetime, policy: ManifestPolicy, limit: int = 1000
) -> list[Outbound]:
    """Resend deliveries to online devices that did not acknowledge in time.

    Offline devices are left alone: they receive their manifest on ``hello``.
    After ``max_attempts`` a delivery is marked ``failed``.
    """
    cutoff = now - timedelta(seconds=policy.ack_timeout_seconds)
    rows = session.execute(
        select(DeviceManifest, Device.online)
        .join(Device, Device.id == DeviceManifest.device_id)
        .where(
            DeviceManifest.delivery_state.in_(("pending", "delivered")),
            DeviceManifest.updated_at <= cutoff,
        )
        .limit(limit)
    ).all()
    out: list[Outbound] = []
    for row, online in rows:
        if row.attempts >= policy.max_attempts:
            row.delivery_state = "failed"
            row.failure = f"not acknowledged after {row.attempts} attempts"
            row.updated_at = now
        elif online:
            _mark_sent(row, now, attempts=row.attempts + 1)
            out.append(
                _delivery(row.device_id, row.signed, policy.rotations_after(row.acknowledged_kid))
            )
    return out


def reissue_rotated(
    session: Session, *, now: datetime, policy: ManifestPolicy, limit: int = 1000
) -> list[Outbound]:
    """After a key rotation: re-sign the manifests of online devices with the new key.

    Offline devices are brought over on their next ``hello``.
    """
    ids = session.scalars(
        select(DeviceManifest.device_id)
        .join(Device, Device.id == DeviceManifest.device_id)
        .where(DeviceManifest.kid != policy.kid.hex(), Device.online.is_(True))
        .limit(limit)
    ).all()
    return issue(session, ids, now=now, policy=policy)
