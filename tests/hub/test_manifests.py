"""The manifest delivery state machine, on both databases, with a controlled clock."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select, update

from hub.manifests import service
from hub.manifests.models import DeviceManifest
from hub.registry.models import Device
from protocols.cose import CoseKey
from protocols.manifest import verify_manifest
from protocols.messages import Hello, ManifestAck, ManifestDelivery, decode_as
from tests.hub.conftest import Clock
from tests.hub.fleet import MANIFEST_POLICY, MANIFEST_SIGNER, Fleet

POLICY = MANIFEST_POLICY
KEY = CoseKey.ed25519(MANIFEST_SIGNER.kid, MANIFEST_SIGNER.public_key_bytes())


@pytest.fixture
def fleet(session_factory, clock: Clock) -> Fleet:
    return Fleet.create(session_factory, clock.now)


def _issue(fleet: Fleet, device_id: str, now):
    with fleet.factory() as s:
        out = service.issue(s, [device_id], now=now, policy=POLICY)
        s.commit()
    return out


def _row(fleet: Fleet, device_id: str) -> DeviceManifest:
    with fleet.factory() as s:
        return s.get_one(DeviceManifest, device_id)


def _ack(fleet: Fleet, device_id: str, seq: int, status: str, now, reason=None) -> None:
    with fleet.factory() as s:
        ack = ManifestAck(seq=seq, status=status, reason=reason)
        service.handle_ack(s, device_id=device_id, ack=ack, now=now)
        s.commit()


def test_issue_signs_a_verifiable_manifest_with_increasing_sequence(fleet: Fleet, clock: Clock):
    device_id, _ = fleet.claimed_device("MF-1")
    (first,) = _issue(fleet, device_id, clock.now)
    (second,) = _issue(fleet, device_id, clock.advance(seconds=1))
    assert first.topic == f"d/{device_id}/down/manifest" and first.track == device_id
    m1 = verify_manifest(decode_as(ManifestDelivery, first.payload).signed, [KEY])
    m2 = verify_manifest(decode_as(ManifestDelivery, second.payload).signed, [KEY])
    assert (m1.device_id, m1.seq, m2.seq) == (device_id, 1, 2)
    assert m2.not_after - m2.issued_at == POLICY.lease_seconds
    assert _row(fleet, device_id).delivery_state == "pending"


def test_unclaimed_and_disabled_devices_get_no_manifest(fleet: Fleet, clock: Clock):
    registered = fleet.device("MF-R")
    disabled, _ = fleet.claimed_device("MF-D")
    fleet.set_status(disabled, "disabled")
    with fleet.factory() as s:
        assert (
            service.issue(s, [registered, disabled, "dev-nope"], now=clock.now, policy=POLICY) == []
        )


def test_delivery_states(fleet: Fleet, clock: Clock):
    device_id, _ = fleet.claimed_device("MF-S")
    _issue(fleet, device_id, clock.now)
    with fleet.factory() as s:
        service.mark_delivered(s, [device_id], now=clock.now)
        s.commit()
    assert _row(fleet, device_id).delivery_state == "delivered"
    _ack(fleet, device_id, 1, "accepted", clock.now)
    row = _row(fleet, device_id)
    assert (row.delivery_state, row.acknowledged_kid) == ("acknowledged", MANIFEST_SIGNER.kid.hex())
    assert row.acknowledged_signed == row.signed


def test_acks_of_older_sequences_and_stray_rejections_are_ignored(fleet: Fleet, clock: Clock):
    device_id, _ = fleet.claimed_device("MF-O")
    _issue(fleet, device_id, clock.now)
    _ack(fleet, device_id, 1, "accepted", clock.now)
    _issue(fleet, device_id, clock.now)  # seq 2, pending
    _ack(fleet, device_id, 1, "accepted", clock.now)  # late ack of seq 1
    assert _row(fleet, device_id).delivery_state == "pending"
    _ack(fleet, device_id, 2, "accepted", clock.now)
    _ack(fleet, device_id, 2, "rejected", clock.now, "rollback: duplicate")  # holds seq 2 already
    assert _row(fleet, device_id).delivery_state == "acknowledged"
    _ack(fleet, device_id, 9, "accepted", clock.now)  # a sequence never issued
    assert _row(fleet, device_id).delivery_state == "acknowledged"


def test_a_rejection_fails_the_delivery_with_its_reason(fleet: Fleet, clock: Clock):
    device_id, _ = fleet.claimed_device("MF-X")
    _issue(fleet, device_id, clock.now)
    _ack(fleet, device_id, 0, "rejected", clock.now, "bad_signature: no trusted key")
    row = _row(fleet, device_id)
    assert (row.delivery_state, row.failure) == ("failed", "bad_signature: no trusted key")


def test_unacknowledged_deliveries_are_resent_to_online_devices_then_fail(
    fleet: Fleet, clock: Clock
):
    online, _ = fleet.claimed_device("MF-ON")
    offline, _ = fleet.claimed_device("MF-OFF")
    with fleet.factory() as s:
        s.execute(update(Device).where(Device.id == online).values(online=True))
        s.commit()
    _issue(fleet, online, clock.now)
    _issue(fleet, offline, clock.now)
    for attempt in range(2, POLICY.max_attempts + 1):
        now = clock.advance(seconds=POLICY.ack_timeout_seconds)
        with fleet.factory() as s:
            out = service.retry_unacknowledged(s, now=now, policy=POLICY)
            s.commit()
        assert [o.track for o in out if o.track in (online, offline)] == [online]
        assert _row(fleet, online).attempts == attempt
    with fleet.factory() as s:
        assert service.retry_unacknowledged(s, now=clock.advance(seconds=60), policy=POLICY) == []
        s.commit()
    assert _row(fleet, online).delivery_state == "failed"
    assert _row(fleet, offline).delivery_state == "pending"  # it will get it on hello


def test_renewal_reissues_only_leases_inside_the_window(fleet: Fleet, clock: Clock):
    device_id, _ = fleet.claimed_device("MF-L")
    _issue(fleet, device_id, clock.now)
    early = clock.now + timedelta(seconds=POLICY.lease_seconds - POLICY.renew_before_seconds - 1)
    with fleet.factory() as s:
        # (The job is fleet-wide; other tests' devices share this database.)
        assert device_id not in {o.track for o in service.renew_due(s, now=early, policy=POLICY)}
        s.rollback()
        due = service.renew_due(s, now=early + timedelta(seconds=2), policy=POLICY)
        s.commit()
    assert device_id in {o.track for o in due} and _row(fleet, device_id).seq == 2


def test_hello_resends_the_current_manifest_or_issues_when_stale(fleet: Fleet, clock: Clock):
    device_id, _ = fleet.claimed_device("MF-H")

    def hello(seq: int):
        with fleet.factory() as s:
            out = service.on_hello(
                s,
                device_id=device_id,
                hello=Hello(agent_version="1", manifest_seq=seq, boot_epoch=1),
                now=clock.now,
                policy=POLICY,
            )
            s.commit()
        return out

    assert len(hello(0)) == 1 and _row(fleet, device_id).seq == 1  # first manifest
    assert hello(1) == []  # up to date
    resent = hello(0)  # lost its state: same manifest again, not a new sequence
    assert len(resent) == 1 and _row(fleet, device_id).seq == 1
    rotated = service.ManifestPolicy(kid=b"newkid01", sign=MANIFEST_SIGNER.sign)
    with fleet.factory() as s:
        out = service.on_hello(
            s,
            device_id=device_id,
            hello=Hello(agent_version="1", manifest_seq=1, boot_epoch=1),
            now=clock.now,
            policy=rotated,
        )
        s.commit()
    assert len(out) == 1 and _row(fleet, device_id).seq == 2  # re-signed under the new key


# ------------------------------------------------------------------ bulk writes


_ROW_COLUMNS = (
    "seq",
    "delivery_state",
    "failure",
    "acknowledged_at",
    "acknowledged_kid",
    "updated_at",
)


def _snapshot(fleet: Fleet, device_ids: list[str]) -> dict[str, tuple]:
    with fleet.factory() as s:
        rows = s.scalars(select(DeviceManifest).where(DeviceManifest.device_id.in_(device_ids)))
        return {
            r.device_id: (
                *(getattr(r, c) for c in _ROW_COLUMNS),
                None if r.acknowledged_signed is None else r.acknowledged_signed == r.signed,
            )
            for r in rows
        }


ACK_SCRIPTS = [
    # (seq offset from the current one, status), final (state, failure);
    # offset 0 is the current seq, -1 the previous one, +1 one never issued.
    ([(0, "rejected"), (-1, "rejected"), (0, "accepted")], ("acknowledged", "r1")),
    ([(0, "accepted"), (-1, "rejected")], ("failed", "r1")),
    ([(-1, "accepted"), (1, "accepted"), (0, "unchanged")], ("acknowledged", None)),
    ([(-1, "rejected"), (-1, "rejected")], ("failed", "r1")),
    ([(0, "rejected")], ("pending", None)),  # a stray duplicate refused: nothing failed
]


@pytest.mark.parametrize(("script", "final"), ACK_SCRIPTS, ids=range(len(ACK_SCRIPTS)))
def test_a_batch_of_acks_ends_as_the_same_acks_one_by_one(
    fleet: Fleet, clock: Clock, script: list[tuple[int, str]], final: tuple[str, str | None]
):
    batched, single = fleet.claimed_device("MF-B1")[0], fleet.claimed_device("MF-B2")[0]
    for device_id in (batched, single):
        _issue(fleet, device_id, clock.now)
        _issue(fleet, device_id, clock.now)  # seq 2
    acks = [
        ManifestAck(seq=2 + offset, status=status, reason=f"r{i}" if status == "rejected" else None)
        for i, (offset, status) in enumerate(script)
    ]
    now = clock.advance(seconds=5)
    with fleet.factory() as s:
        service.handle_acks(s, [(batched, ack) for ack in acks], now=now)
        s.commit()
    for ack in acks:
        _ack(fleet, single, ack.seq, ack.status, now, ack.reason)
    rows = _snapshot(fleet, [batched, single])
    assert rows[batched] == rows[single]
    assert rows[batched][1:3] == final


def test_bulk_writes_refresh_rows_the_session_already_holds(fleet: Fleet, clock: Clock):
    device_id, _ = fleet.claimed_device("MF-IM")
    _issue(fleet, device_id, clock.now)
    with fleet.factory() as s:
        row = s.get_one(DeviceManifest, device_id)
        assert (row.seq, row.delivery_state) == (1, "pending")
        service.issue(s, [device_id], now=clock.now, policy=POLICY)
        assert (row.seq, row.delivery_state) == (2, "pending")
        service.handle_acks(s, [(device_id, ManifestAck(seq=2, status="accepted"))], now=clock.now)
        assert row.delivery_state == "acknowledged" and row.acknowledged_signed == row.signed
        s.commit()
    assert _row(fleet, device_id).delivery_state == "acknowledged"


def test_issue_sees_unflushed_changes_of_its_session(fleet: Fleet, clock: Clock):
    device_id, _ = fleet.claimed_device("MF-UF")
    _issue(fleet, device_id, clock.now)
    with fleet.factory() as s:
        s.get_one(DeviceManifest, device_id).seq = 41  # not flushed yet
        (delivery,) = service.issue(s, [device_id], now=clock.now, policy=POLICY)
        s.commit()
    signed = decode_as(ManifestDelivery, delivery.payload).signed
    assert verify_manifest(signed, [KEY]).seq == 42 == _row(fleet, device_id).seq


def test_one_change_issues_equal_features_to_many_devices(fleet: Fleet, clock: Clock):
    devices = [fleet.claimed_device(f"MF-M{i}")[0] for i in range(5)]
    with fleet.factory() as s:
        first = service.issue(s, devices[:2], now=clock.now, policy=POLICY)  # inserts
        s.commit()
    with fleet.factory() as s:
        out = service.issue(s, devices, now=clock.now, policy=POLICY)  # updates and inserts
        s.commit()
    assert [o.track for o in out] == sorted(devices) and len(first) == 2
    manifests = [verify_manifest(decode_as(ManifestDelivery, o.payload).signed, [KEY]) for o in out]
    assert {m.device_id: m.seq for m in manifests} == {
        d: (2 if d in devices[:2] else 1) for d in devices
    }
    assert len({tuple(sorted(m.features.items())) for m in manifests}) == 1
    rows = {d: _row(fleet, d) for d in devices}
    assert all(r.delivery_state == "pending" and r.attempts == 1 for r in rows.values())
    assert {r.tenant_id for r in rows.values()} == {fleet.tenant_id}
