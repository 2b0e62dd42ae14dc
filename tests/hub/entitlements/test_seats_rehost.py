"""Floating seats (service level, incl. concurrent checkouts) and rehosting."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from hub.entitlements import grants, seats
from hub.entitlements.models import SeatLease
from hub.entitlements.service import expire_due
from tests.hub.conftest import Clock
from tests.hub.entitlements.conftest import World, db_state


def _open_seats(factory: sessionmaker[Session], ent_id: str) -> int:
    with factory() as s:
        return (
            s.scalar(
                select(func.count()).where(
                    SeatLease.entitlement_id == ent_id, SeatLease.released_at.is_(None)
                )
            )
            or 0
        )


def test_seats_taken_and_freed(
    world: World, session_factory: sessionmaker[Session], clock: Clock
) -> None:
    ent = world.grant("floating", quantity=2)
    devices = [world.device(f"FL-{i}") for i in range(3)]
    for device in devices:
        world.ok(world.activate(ent["id"], device), 201)
    assert world.features(devices[0])["vpn"]["enabled"] is False  # enrolled, no seat
    now = clock.now
    with session_factory() as s:
        results = [
            seats.checkout_seat(s, device_id=d, product_id=world.product_id, now=now)
            for d in devices
        ]
        again = seats.checkout_seat(s, device_id=devices[0], product_id=world.product_id, now=now)
        s.commit()
    assert [(r.granted, r.reason) for r in results] == [
        (True, "granted"),
        (True, "granted"),
        (False, "no_seat_available"),
    ]
    assert results[0].device_ids == {devices[0]}
    assert (again.granted, again.reason, again.device_ids) == (True, "already_held", frozenset())
    assert world.features(devices[0])["vpn"]["enabled"] is True
    assert world.features(devices[2])["vpn"]["enabled"] is False

    with session_factory() as s:
        assert seats.release_seat(
            s, device_id=devices[0], product_id=world.product_id, now=now
        ) == {devices[0]}
        assert seats.checkout_seat(
            s, device_id=devices[2], product_id=world.product_id, now=now
        ).granted
        s.commit()
    assert world.features(devices[0])["vpn"]["enabled"] is False
    assert world.features(devices[2])["vpn"]["enabled"] is True

    with session_factory() as s:  # last will
        assert seats.release_all_for_device(s, devices[1], now) == {devices[1]}
        assert seats.release_all_for_device(s, devices[1], now) == frozenset()
        s.commit()
    clock.advance(seconds=30)
    with session_factory() as s:
        assert seats.heartbeat_seat(
            s, device_id=devices[2], product_id=world.product_id, now=clock.now
        )
        assert not seats.heartbeat_seat(
            s, device_id=devices[1], product_id=world.product_id, now=clock.now
        )
        s.commit()
    with session_factory() as s:
        assert (
            seats.expire_stale_seats(s, clock.now + timedelta(seconds=89), timedelta(seconds=90))
            == []
        )
        assert seats.expire_stale_seats(
            s, clock.now + timedelta(seconds=90), timedelta(seconds=90)
        ) == [devices[2]]
        s.commit()
    assert _open_seats(session_factory, ent["id"]) == 0
    actions = [e["action"] for e in world.ok(world.get(f"/devices/{devices[2]}/history"))["items"]]
    assert actions[:2] == ["seat.release", "seat.checkout"]
    with session_factory() as s:
        assert (
            seats.checkout_seat(
                s, device_id=world.device("NOPE"), product_id=world.product_id, now=now
            ).reason
            == "not_entitled"
        )


def test_suspending_floating_frees_seats(
    world: World, session_factory: sessionmaker[Session], clock: Clock
) -> None:
    ent = world.grant("floating", quantity=1)
    device = world.device("FS-1")
    world.ok(world.activate(ent["id"], device), 201)
    with session_factory() as s:
        assert seats.checkout_seat(
            s, device_id=device, product_id=world.product_id, now=clock.now
        ).granted
        s.commit()
    body = world.ok(world.post(f"/entitlements/{ent['id']}/suspend", {"reason": "audit"}))
    assert body["affected_device_ids"] == [device]
    assert _open_seats(session_factory, ent["id"]) == 0
    with session_factory() as s:
        assert (
            seats.checkout_seat(
                s, device_id=device, product_id=world.product_id, now=clock.now
            ).reason
            == "not_entitled"
        )


def test_seat_lease_bounds_manifest_lease(
    world: World, session_factory: sessionmaker[Session], clock: Clock
) -> None:
    ent = world.grant("floating", quantity=1)
    device = world.device("FLE-1")
    world.ok(world.activate(ent["id"], device), 201)
    with session_factory() as s:
        seats.checkout_seat(s, device_id=device, product_id=world.product_id, now=clock.now)
        s.commit()
        lease = grants.device_lease(s, device, clock.now, 86400, seat_timeout=timedelta(minutes=5))
        assert lease == clock.now + timedelta(minutes=5)
        assert grants.device_lease(s, device, clock.now, 86400) == clock.now + timedelta(days=1)
        assert grants.device_features(s, device, clock.now)["vpn"].enabled is True


def test_concurrent_checkouts_never_exceed_quantity(
    world: World, session_factory: sessionmaker[Session], clock: Clock, database_url: str
) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("row locks are exercised on PostgreSQL; SQLite serialises writers")
    quantity, contenders = 3, 16
    ent = world.grant("floating", quantity=quantity)
    devices = [world.device(f"C-{i}") for i in range(contenders)]
    for device in devices:
        world.ok(world.activate(ent["id"], device), 201)
    barrier = threading.Barrier(contenders)
    granted: list[str] = []
    errors: list[BaseException] = []

    def contend(device: str) -> None:
        try:
            with session_factory() as s:
                barrier.wait()
                result = seats.checkout_seat(
                    s, device_id=device, product_id=world.product_id, now=clock.now
                )
                s.commit()
            if result.granted:
                granted.append(device)
        except BaseException as exc:
            errors.append(exc)

    for _round in range(3):
        threads = [threading.Thread(target=contend, args=(d,)) for d in devices]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        assert _open_seats(session_factory, ent["id"]) == quantity
        assert len(set(granted)) == quantity
        with session_factory() as s:
            for device in set(granted):
                seats.release_all_for_device(s, device, clock.now)
            s.commit()
        granted.clear()


def test_concurrent_checkouts_sqlite_never_over_grant(
    world: World, session_factory: sessionmaker[Session], clock: Clock, database_url: str
) -> None:
    if not database_url.startswith("sqlite"):
        pytest.skip("SQLite variant")
    ent = world.grant("floating", quantity=2)
    devices = [world.device(f"SC-{i}") for i in range(8)]
    for device in devices:
        world.ok(world.activate(ent["id"], device), 201)

    def contend(device: str) -> None:
        try:
            with session_factory() as s:
                seats.checkout_seat(s, device_id=device, product_id=world.product_id, now=clock.now)
                s.commit()
        except OperationalError:
            pass  # "database is locked": the device retries; never an over-grant

    threads = [threading.Thread(target=contend, args=(d,)) for d in devices]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert 1 <= _open_seats(session_factory, ent["id"]) <= 2


def test_rehost_moves_everything_at_once(
    world: World, session_factory: sessionmaker[Session]
) -> None:
    ent = world.grant("node_locked")
    old, new = world.device("RH-1"), world.device("RH-2")
    world.ok(world.activate(ent["id"], old), 201)
    body = world.ok(
        world.post(
            f"/entitlements/{ent['id']}/rehost",
            {"from_device_id": old, "to_device_id": new, "reason": "RMA-77"},
        )
    )
    assert body["affected_device_ids"] == sorted([old, new])
    assert body["activation"]["device_id"] == new and body["activation"]["temporary_until"] is None
    assert world.features(old)["vpn"]["enabled"] is False
    assert world.features(new)["vpn"]["enabled"] is True
    for device, action in ((old, "activation.rehost.out"), (new, "activation.rehost.in")):
        entry = world.ok(world.get(f"/devices/{device}/history"))["items"][0]
        assert (entry["action"], entry["reason"]) == (action, "RMA-77")
    # A refused rehost (target already has it) leaves both sides untouched.
    third = world.device("RH-3")
    before = db_state(session_factory)
    refused = world.post(
        f"/entitlements/{ent['id']}/rehost", {"from_device_id": new, "to_device_id": new}
    )
    assert refused.status_code == 422
    sub = world.grant("perpetual", quantity=2)
    world.ok(world.activate(sub["id"], new), 201)
    world.ok(world.activate(sub["id"], third), 201)
    before = db_state(session_factory)
    refused = world.post(
        f"/entitlements/{sub['id']}/rehost", {"from_device_id": new, "to_device_id": third}
    )
    assert refused.json()["error"] == "already_activated"
    assert db_state(session_factory) == before


def test_temporary_rehost_lapses_unless_confirmed(
    world: World, session_factory: sessionmaker[Session], clock: Clock
) -> None:
    ent = world.grant("perpetual")
    old, new, spare = world.device("TR-1"), world.device("TR-2"), world.device("TR-3")
    world.ok(world.activate(ent["id"], old), 201)
    body = world.ok(
        world.post(
            f"/entitlements/{ent['id']}/rehost",
            {"from_device_id": old, "to_device_id": new, "temporary_seconds": 3600},
        )
    )
    assert body["activation"]["temporary_until"] is not None
    with session_factory() as s:
        assert grants.device_lease(s, new, clock.now, 86400) == clock.now + timedelta(hours=1)
    clock.advance(minutes=59, seconds=59)
    assert world.features(new)["vpn"]["enabled"] is True
    clock.advance(seconds=1)
    assert world.features(new)["vpn"]["enabled"] is False
    assert world.features(old)["vpn"]["enabled"] is False
    assert (
        world.post(f"/entitlements/{ent['id']}/activations/{new}/confirm", {}).json()["error"]
        == "not_temporary"
    )
    with session_factory() as s:
        assert expire_due(s, now=clock.now) == {new}
        s.commit()
    # The slot is free again: the spare can take it.
    world.ok(world.activate(ent["id"], spare), 201)


def test_confirmed_rehost_is_permanent(world: World, clock: Clock) -> None:
    ent = world.grant("floating", quantity=1)
    old, new = world.device("CR-1"), world.device("CR-2")
    world.ok(world.activate(ent["id"], old), 201)
    world.ok(
        world.post(
            f"/entitlements/{ent['id']}/rehost",
            {"from_device_id": old, "to_device_id": new, "temporary_seconds": 600},
        )
    )
    body = world.ok(
        world.post(f"/entitlements/{ent['id']}/activations/{new}/confirm", {"reason": "ok"})
    )
    assert body["activation"]["temporary_until"] is None
    clock.advance(hours=2)
    listed = world.ok(world.get(f"/entitlements/{ent['id']}/activations"))
    assert [a["device_id"] for a in listed] == [new]
