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
from typing import Any, NamedTuple, cast

from sqlalchemy import Table, Update, bindparam, insert, select, update
from sqlalchemy.orm import Session

from hub.entitlements.grants import (
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
from protocols.manifest import FeatureEntry, FeatureManifest, sign_manifests
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
    allowed to hold a manifest. The devices with their current sequences, and
    their grants, are read with a few ``IN (...)`` queries per chunk of ids;
    features and lease are computed once per distinct set of grants; every
    manifest is signed (each names its device and sequence; an identical
    feature section is encoded once); the rows are written with one
    ``executemany`` UPDATE (and one bulk INSERT for first manifests).

    Returns:
        One delivery per issued manifest, in device id order, to publish after
        the caller commits.
    """
    wanted = sorted(set(device_ids))
    if not wanted:
        return []
    targets = _load_targets(session, wanted)
    loaded = load_grants_for_devices(session, [t.id for t in targets])
    rights = RightsMemo(now, policy.lease_seconds)
    hashes: dict[Hashable, str] = {}
    plans: list[_Plan] = []
    issued_at = int(now.timestamp())
    for target in targets:
        granted = rights(loaded[target.id])
        if granted.key not in hashes:
            hashes[granted.key] = features_hash(granted.features)
        not_after = max(granted.not_after, now + timedelta(seconds=1))
        manifest = FeatureManifest(
            device_id=target.id,
            seq=target.seq + 1,
            issued_at=issued_at,
            not_after=int(not_after.timestamp()),
            features=granted.features,  # shared, never mutated: encoded once
        )
        plans.append(_Plan(target, manifest, not_after, hashes[granted.key]))
    signed = sign_manifests([p.manifest for p in plans], kid=policy.kid, sign=policy.sign)
    _write_issued(session, plans, signed, now=now, kid=policy.kid.hex())
    return [
        _delivery(plan.target.id, blob, policy.rotations_after(plan.target.acknowledged_kid))
        for plan, blob in zip(plans, signed, strict=True)
    ]


class _Target(NamedTuple):
    """A claimed device to issue to, with its current manifest's sequence (0: none)."""

    id: str
    tenant_id: str
    seq: int
    acknowledged_kid: str | None
    has_row: bool


class _Plan(NamedTuple):
    """One manifest about to be signed and stored."""

    target: _Target
    manifest: FeatureManifest
    not_after: datetime
    digest: str


def _load_targets(session: Session, wanted: list[str]) -> list[_Target]:
    """The claimed devices among ``wanted`` (sorted ids), with their manifest rows' state."""
    targets: list[_Target] = []
    for chunk in chunks(wanted):
        rows = session.execute(
            select(
                Device.id,
                Device.tenant_id,
                DeviceManifest.seq,
                DeviceManifest.acknowledged_kid,
            )
            .outerjoin(DeviceManifest, DeviceManifest.device_id == Device.id)
            .where(Device.id.in_(chunk), Device.status == "claimed")
        )
        targets.extend(
            _Target(device_id, tenant_id, seq or 0, acknowledged_kid, seq is not None)
            for device_id, tenant_id, seq, acknowledged_kid in rows
        )
    targets.sort()
    return targets


def _write_issued(
    session: Session, plans: list[_Plan], signed: list[bytes], *, now: datetime, kid: str
) -> None:
    """Store the issued manifests: one executemany UPDATE, one bulk INSERT of first ones.

    The UPDATE binds only what differs between rows (device, sequence, lease,
    digest, signed bytes); the time, key id and reset delivery state are shared.
    """
    updates: list[dict[str, Any]] = []
    inserts: list[dict[str, Any]] = []
    for plan, blob in zip(plans, signed, strict=True):
        if plan.target.has_row:
            updates.append(
                {
                    "b_device_id": plan.target.id,
                    "b_seq": plan.manifest.seq,
                    "b_not_after": plan.not_after,
                    "b_features_hash": plan.digest,
                    "b_signed": blob,
                    "b_now": now,
                    "b_kid": kid,
                }
            )
        else:
            inserts.append(
                {
                    "device_id": plan.target.id,
                    "tenant_id": plan.target.tenant_id,
                    "seq": plan.manifest.seq,
                    "issued_at": now,
                    "not_after": plan.not_after,
                    "features_hash": plan.digest,
                    "kid": kid,
                    "signed": blob,
                    "acknowledged_kid": None,
                    "acknowledged_signed": None,
                    **_sent_state(now, attempts=1),
                }
            )
    if updates:
        session.connection().execute(_REISSUE, updates)
    if inserts:
        session.execute(insert(DeviceManifest), inserts)
    _expire_loaded(session, [p.target.id for p in plans])


_MANIFESTS = cast(Table, DeviceManifest.__table__)
# A re-issue: the new manifest, delivery state reset to pending, first attempt.
_REISSUE = (
    _MANIFESTS.update()
    .where(_MANIFESTS.c.device_id == bindparam("b_device_id"))
    .values(
        seq=bindparam("b_seq"),
        issued_at=bindparam("b_now"),
        not_after=bindparam("b_not_after"),
        features_hash=bindparam("b_features_hash"),
        kid=bindparam("b_kid"),
        signed=bindparam("b_signed"),
        delivery_state="pending",
        attempts=1,
        delivered_at=None,
        acknowledged_at=None,
        failure=None,
        updated_at=bindparam("b_now"),
    )
)


def _sent_state(now: datetime, *, attempts: int) -> dict[str, Any]:
    return {
        "delivery_state": "pending",
        "attempts": attempts,
        "delivered_at": None,
        "acknowledged_at": None,
        "failure": None,
        "updated_at": now,
    }


def _expire_loaded(session: Session, device_ids: Iterable[str]) -> None:
    """Expire manifest rows this session holds for these devices (bulk writes bypass them)."""
    held = [key for key in session.identity_map.keys() if key[0] is DeviceManifest]  # noqa: SIM118
    if not held:
        return
    wanted = set(device_ids)
    for key in held:
        row = session.identity_map.get(key)
        if row is not None and key[1][0] in wanted:
            session.expire(row)


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
    handle_acks(session, [(device_id, ack)], now=now)


def handle_acks(
    session: Session, acks: Sequence[tuple[str, ManifestAck]], *, now: datetime
) -> None:
    """Record many acks, in order, as :func:`handle_ack` would one by one.

    The rows' sequences are read with one query per chunk of device ids; each
    device's acks are folded in arrival order into the columns they set; the
    changes are written with one ``executemany`` UPDATE per shape of change
    (acknowledged, failed, both), each guarded by the sequence it was checked
    against. Manifest rows this session holds are expired.

    Args:
        session: the batch's session.
        acks: ``(device_id, ack)`` pairs in arrival order (a device may repeat).
        now: the batch's time.
    """
    ids = sorted({device_id for device_id, _ in acks})
    seqs: dict[str, int] = {}
    for chunk in chunks(ids):
        rows = session.execute(
            select(DeviceManifest.device_id, DeviceManifest.seq).where(
                DeviceManifest.device_id.in_(chunk)
            )
        )
        seqs.update((device_id, seq) for device_id, seq in rows)
    changes: dict[str, dict[str, Any]] = {}
    for device_id, ack in acks:
        columns = _ack_change(seqs.get(device_id), device_id, ack, now)
        if columns is not None:
            changes.setdefault(device_id, {"b_device_id": device_id, "b_seq": seqs[device_id]})
            changes[device_id].update(columns)
    by_shape: dict[frozenset[str], list[dict[str, Any]]] = {}
    for change in changes.values():
        by_shape.setdefault(frozenset(change), []).append(change)
    connection = session.connection()
    for shape, params in by_shape.items():
        connection.execute(_ack_update(shape), params)
    _expire_loaded(session, changes)


def _ack_change(
    seq: int | None, device_id: str, ack: ManifestAck, now: datetime
) -> dict[str, Any] | None:
    """The columns ``ack`` sets on a row at ``seq`` (``None``: the ack changes nothing).

    An acknowledgement also copies the row's ``kid`` and ``signed`` into
    ``acknowledged_kid`` and ``acknowledged_signed`` (see :func:`_ack_update`).
    """
    if seq is None or ack.seq > seq:
        log.warning("ack of unknown seq %d from %s", ack.seq, device_id)
        return None
    if (ack.status == "rejected") == (ack.seq == seq):
        log.info("ignoring %s ack of seq %d from %s", ack.status, ack.seq, device_id)
        return None
    if ack.status == "rejected":
        failure = ack.reason or "rejected by the device"
        log.warning("device %s rejected manifest %d: %s", device_id, seq, failure)
        return {"delivery_state": "failed", "failure": failure, "updated_at": now}
    return {"delivery_state": "acknowledged", "acknowledged_at": now, "updated_at": now}


def _ack_update(shape: frozenset[str]) -> Update:
    """``UPDATE device_manifests SET <shape's columns> WHERE device_id = ? AND seq = ?``.

    The SET clause comes from the parameters' column keys; an acknowledgement
    (``acknowledged_at`` in the shape) also copies ``kid`` and ``signed``.
    """
    table = _MANIFESTS
    statement = table.update().where(
        table.c.device_id == bindparam("b_device_id"), table.c.seq == bindparam("b_seq")
    )
    if "acknowledged_at" in shape:
        statement = statement.values(
            acknowledged_kid=table.c.kid, acknowledged_signed=table.c.signed
        )
    return statement


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
