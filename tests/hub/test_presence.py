from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

import hub.scheduler
from hub.registry import presence
from hub.registry.models import Device
from hub.scheduler import build_scheduler, sweep_presence
from protocols import topics
from protocols.messages import Hello, State, Status, decode_message
from tests.hub.conftest import Clock
from tests.hub.fleet import Fleet

STALE = timedelta(seconds=120)


@pytest.fixture
def fleet(session_factory: sessionmaker[Session], clock: Clock) -> Fleet:
    return Fleet.create(session_factory, clock.now)


def presence_of(
    factory: sessionmaker[Session], device_id: str
) -> tuple[bool, datetime | None, datetime | None]:
    with factory() as s:
        device = s.get_one(Device, device_id)
        return device.online, device.last_seen_at, device.last_connect_at


def set_presence(
    factory: sessionmaker[Session], device_id: str, online: bool, last_seen: datetime | None
) -> None:
    with factory() as s:
        s.execute(
            update(Device)
            .where(Device.id == device_id)
            .values(online=online, last_seen_at=last_seen)
        )
        s.commit()


def status(factory: sessionmaker[Session], device_id: str, online: bool, now: datetime) -> None:
    with factory() as s:
        presence.handle_status(s, device_id=device_id, status=Status(online=online), now=now)
        s.commit()


def test_status_online_then_offline(fleet: Fleet, clock: Clock) -> None:
    device_id, _ = fleet.claimed_device("PR-S")
    assert presence_of(fleet.factory, device_id) == (False, None, None)
    first = clock.advance(seconds=10)
    status(fleet.factory, device_id, True, first)
    assert presence_of(fleet.factory, device_id) == (True, first, None)
    heartbeat = clock.advance(seconds=30)
    status(fleet.factory, device_id, True, heartbeat)
    assert presence_of(fleet.factory, device_id) == (True, heartbeat, None)
    gone = clock.advance(seconds=5)
    status(fleet.factory, device_id, False, gone)
    assert presence_of(fleet.factory, device_id) == (False, gone, None)


def test_status_of_unclaimed_or_unknown_device_ignored(fleet: Fleet, clock: Clock) -> None:
    unclaimed = fleet.device("PR-U")
    status(fleet.factory, unclaimed, True, clock.now)
    assert presence_of(fleet.factory, unclaimed) == (False, None, None)
    status(fleet.factory, "dev-00000000000000000000", True, clock.now)
    with fleet.factory() as s:
        assert s.get(Device, "dev-00000000000000000000") is None


def test_hello_marks_online_and_sets_last_connect(fleet: Fleet, clock: Clock) -> None:
    device_id, _ = fleet.claimed_device("PR-H")
    status(fleet.factory, device_id, False, clock.now)
    connected = clock.advance(seconds=42)
    with fleet.factory() as s:
        out = presence.handle_hello(
            s,
            device_id=device_id,
            hello=Hello(agent_version="1.2.3", manifest_seq=7, boot_epoch=2),
            now=connected,
        )
        s.commit()
    assert presence_of(fleet.factory, device_id) == (True, connected, connected)
    [reply] = out
    assert reply.topic == topics.device_down(device_id, topics.DownKind.STATE)
    assert decode_message(reply.payload) == State(
        device_id=device_id, server_time=int(connected.timestamp()), manifest_seq=0
    )
    # A later heartbeat moves last_seen_at but not last_connect_at.
    beat = clock.advance(seconds=30)
    status(fleet.factory, device_id, True, beat)
    assert presence_of(fleet.factory, device_id) == (True, beat, connected)


def test_hello_of_unclaimed_device_changes_nothing(fleet: Fleet, clock: Clock) -> None:
    device_id = fleet.device("PR-HU")
    with fleet.factory() as s:
        out = presence.handle_hello(
            s,
            device_id=device_id,
            hello=Hello(agent_version="1", manifest_seq=0, boot_epoch=0),
            now=clock.now,
        )
        s.commit()
    assert out == []
    assert presence_of(fleet.factory, device_id) == (False, None, None)


def test_sweep_stale_marks_only_stale_online_devices(fleet: Fleet, clock: Clock) -> None:
    now = clock.now
    stale, boundary, fresh, offline, never = (fleet.claimed_device(f"PR-W{i}")[0] for i in range(5))
    set_presence(fleet.factory, stale, True, now - STALE - timedelta(seconds=1))
    set_presence(fleet.factory, boundary, True, now - STALE)  # exactly at the limit: kept
    set_presence(fleet.factory, fresh, True, now - timedelta(seconds=5))
    set_presence(fleet.factory, offline, False, now - STALE * 10)
    set_presence(fleet.factory, never, False, None)
    with fleet.factory() as s:
        changed = presence.sweep_stale(s, now=now, stale_after=STALE)
        s.commit()
    # Other tests' devices share the database, so count only ours by state.
    assert changed >= 1
    assert presence_of(fleet.factory, stale)[:2] == (False, now - STALE - timedelta(seconds=1))
    assert presence_of(fleet.factory, boundary)[0] is True
    assert presence_of(fleet.factory, fresh)[0] is True
    assert presence_of(fleet.factory, offline)[0] is False
    assert presence_of(fleet.factory, never)[0] is False
    # One microsecond later the boundary device is stale too; a second sweep is a no-op for it.
    with fleet.factory() as s:
        presence.sweep_stale(s, now=now + timedelta(microseconds=1), stale_after=STALE)
        s.commit()
    assert presence_of(fleet.factory, boundary)[0] is False
    assert presence_of(fleet.factory, fresh)[0] is True


def test_sweep_stale_counts_what_it_changed(
    fleet: Fleet, session_factory: sessionmaker[Session], clock: Clock
) -> None:
    # Far in the future every earlier device is stale; sweep them first so the
    # count below is exactly ours.
    later = clock.advance(days=3650)
    with session_factory() as s:
        presence.sweep_stale(s, now=later, stale_after=STALE)
        s.commit()
    ids = [fleet.claimed_device(f"PR-C{i}")[0] for i in range(3)]
    for device_id in ids[:2]:
        set_presence(fleet.factory, device_id, True, later - STALE - timedelta(minutes=1))
    set_presence(fleet.factory, ids[2], True, later)
    with session_factory() as s:
        assert presence.sweep_stale(s, now=later, stale_after=STALE) == 2
        s.commit()
    with session_factory() as s:
        assert presence.sweep_stale(s, now=later, stale_after=STALE) == 0


def test_scheduler_sweep_presence_commits(
    fleet: Fleet, session_factory: sessionmaker[Session], clock: Clock
) -> None:
    device_id, _ = fleet.claimed_device("PR-J")
    status(fleet.factory, device_id, True, clock.now)
    clock.advance(seconds=STALE.total_seconds() + 1)
    changed = sweep_presence(session_factory, clock, STALE)
    assert changed >= 1
    # Read back through a different session: the job committed its change.
    assert presence_of(fleet.factory, device_id)[0] is False
    assert sweep_presence(session_factory, clock, STALE) == 0


def test_build_scheduler_registers_the_presence_job(
    session_factory: sessionmaker[Session], clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[object, ...]] = []
    monkeypatch.setattr(hub.scheduler, "sweep_presence", lambda *args: calls.append(args))
    scheduler = build_scheduler(
        session_factory, clock, presence_stale_seconds=120, claim_skew_seconds=300
    )
    job = scheduler.get_job("presence-sweep")
    assert job is not None
    job.func()  # wrapped by skip_when_busy (tests/hub/test_scheduler.py)
    assert calls == [(session_factory, clock, STALE)]
    assert job.trigger.interval == timedelta(seconds=30)
    short = build_scheduler(
        session_factory, clock, presence_stale_seconds=8, claim_skew_seconds=300
    )
    assert short.get_job("presence-sweep").trigger.interval == timedelta(seconds=5)
