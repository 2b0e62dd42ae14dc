"""The rollout engine over the database: waves, thresholds, time-outs, windows, operator actions."""

from __future__ import annotations

import os
from typing import Any

from sqlalchemy import select, update

from hub.registry.models import Device
from hub.rollouts.engine import RolloutEngine
from hub.rollouts.models import FirmwareJob
from hub.rollouts.policy import ACTIVE_STATES
from protocols.firmware_messages import (
    FirmwareCancel,
    FirmwareChunk,
    FirmwareChunkRequest,
    FirmwareOffer,
    FirmwareQuery,
    FirmwareReport,
)
from protocols.messages import Message
from tests.hub.firmware.world import World, of_type

STEPS = ("downloading", "downloaded", "verified", "installing", "rebooting")
_keys = iter(range(10**9))


def report(world: World, device: str, job: str, step: str, **extra: Any) -> None:
    world.send(
        (device, FirmwareReport(job_id=job, step=step, key=f"k{next(_keys)}", at=1, **extra))
    )


def confirm(world: World, device: str, job: str) -> None:
    for step in (*STEPS, "confirmed"):
        report(world, device, job, step)


def offers(replies: list[tuple[str, Message]]) -> dict[str, str]:
    return {d: m.job_id for d, m in replies if isinstance(m, FirmwareOffer)}


def cancels(replies: list[tuple[str, Message]]) -> dict[str, str]:
    return {d: m.reason for d, m in replies if isinstance(m, FirmwareCancel)}


def fleet(world: World, n: int, **kw: Any) -> list[str]:
    return [world.device(**kw)[0] for _ in range(n)]


def assert_deadlines(world: World) -> None:
    """No device stuck: every active job has a deadline, no finished one has."""
    with world.factory() as s:
        for job in s.scalars(
            select(FirmwareJob).where(FirmwareJob.tenant_id == world.tenant.tenant_id)
        ):
            assert (job.deadline_at is not None) == (job.state in ACTIVE_STATES), (
                job.job_id,
                job.state,
            )


def test_waves_advance_on_the_success_criterion_and_the_rollout_completes(world: World) -> None:
    package = world.package("1.0.0")
    devices = fleet(world, 10)
    started = world.start(
        package["id"], waves=[{"percent": 20}, {"size": 3}, {"percent": 50}], success_percent=100
    )
    assert [w["planned"] for w in started["waves"]] == [2, 3, 5]
    assert started["state"] == "running" and started["target_count"] == 10
    seen: set[str] = set()
    for wave, size in enumerate((2, 3, 5)):
        offered = offers(world.tick())
        assert len(offered) == size, wave
        assert world.show(started["id"])["current_wave"] == wave
        assert world.tick() == []  # nothing more until this wave succeeds
        seen |= offered.keys()
        for device, job in offered.items():
            confirm(world, device, job)
        assert_deadlines(world)
    assert seen == set(devices)
    world.tick()
    shown = world.show(started["id"])
    assert shown["state"] == "completed" and shown["counts"] == {"confirmed": 10}
    assert "10 of 10" in shown["state_reason"]
    assert all(w["completed_at"] for w in shown["waves"])
    audit = world.ok(world.get("/audit", target_id=started["id"], role="admin"))
    actions = [e["action"] for e in reversed(audit["items"])]
    assert actions == [
        "firmware.rollout.create",
        "firmware.rollout.start",
        "firmware.rollout.advance",
        "firmware.rollout.advance",
        "firmware.rollout.completed",
    ]


def test_a_wave_advances_while_stragglers_finish(world: World) -> None:
    package = world.package("1.0.0")
    fleet(world, 4)
    started = world.start(package["id"], waves=[{"size": 2}, {"size": 2}], success_percent=50)
    first = offers(world.tick())
    device, job = next(iter(first.items()))
    confirm(world, device, job)
    assert len(offers(world.tick())) == 2  # 1 of 2 confirmed meets 50%: the next wave starts
    assert world.show(started["id"])["current_wave"] == 1


def test_failure_threshold_aborts_and_nothing_more_is_offered(world: World) -> None:
    package = world.package("1.0.0")
    fleet(world, 10)
    started = world.start(
        package["id"],
        waves=[{"percent": 50}, {"percent": 50}],
        failure_percent=50,
        failure_min_sample=2,
        failure_action="abort",
    )
    first = offers(world.tick())
    assert len(first) == 5
    items = list(first.items())
    report(world, *items[0], "failed", reason="bad flash")
    report(world, *items[1], "reverted", reason="boot loop")
    report(world, *items[2], "installing")
    replies = world.tick()
    shown = world.show(started["id"])
    assert shown["state"] == "aborted" and "2 of 2" in shown["state_reason"]
    # The two offered-but-not-installing devices are told; the installing one finishes.
    assert cancels(replies) == {items[3][0]: "rollout_aborted", items[4][0]: "rollout_aborted"}
    assert shown["counts"] == {"cancelled": 7, "failed": 1, "installing": 1, "reverted": 1}
    assert world.tick() == []
    # No later query gets an offer either, and the installing device can still finish.
    wave2 = [j["device_id"] for j in world.jobs(started["id"], wave=1)]
    assert not offers(world.send(*[(d, FirmwareQuery(installed_seq=0)) for d in wave2]))
    confirm(world, *items[2])
    assert world.show(started["id"])["counts"]["confirmed"] == 1
    assert_deadlines(world)


def test_failure_threshold_pauses_and_resume_counts_from_there(world: World) -> None:
    package = world.package("1.0.0")
    fleet(world, 6)
    started = world.start(
        package["id"],
        waves=[{"size": 3}, {"size": 3}],
        success_percent=60,
        failure_percent=30,
        failure_min_sample=3,
        failure_action="pause",
    )
    first = list(offers(world.tick()).items())
    confirm(world, *first[0])
    confirm(world, *first[1])
    report(world, *first[2], "failed")
    world.tick()
    shown = world.show(started["id"])
    assert shown["state"] == "paused" and shown["state_reason"].startswith("failure threshold")
    assert world.tick() == []
    resumed = world.ok(world.post(f"/firmware/rollouts/{started['id']}/resume"))
    assert resumed["state"] == "running"
    second = offers(world.tick())  # 2 of 3 met 60%: wave 2 is offered, no re-pause
    assert len(second) == 3
    assert world.show(started["id"])["state"] == "running"


def test_wave_below_the_success_criterion_pauses_and_resume_moves_on(world: World) -> None:
    package = world.package("1.0.0")
    fleet(world, 4)
    started = world.start(
        package["id"],
        waves=[{"size": 2}, {"size": 2}],
        success_percent=100,
        failure_percent=100,
        failure_min_sample=100,
    )
    first = list(offers(world.tick()).items())
    confirm(world, *first[0])
    report(world, *first[1], "failed")
    world.tick()
    shown = world.show(started["id"])
    assert (
        shown["state"] == "paused" and "below the 100% success criterion" in shown["state_reason"]
    )
    world.ok(world.post(f"/firmware/rollouts/{started['id']}/resume"))
    assert world.show(started["id"])["current_wave"] == 1
    assert len(offers(world.tick())) == 2


def test_in_progress_timeouts_count_as_failures(world: World) -> None:
    package = world.package("1.0.0")
    a, b = fleet(world, 2)
    started = world.start(
        package["id"], device_timeout_seconds=60, failure_percent=100, failure_min_sample=100
    )
    offered = offers(world.tick())
    world.clock.advance(seconds=50)
    report(world, b, offered[b], "downloading")  # progress renews b's deadline
    world.clock.advance(seconds=11)
    replies = world.tick()
    assert cancels(replies) == {a: "timed_out"}
    assert world.job_of(started["id"], a)["state"] == "timed_out"
    assert world.job_of(started["id"], b)["state"] == "downloading"
    world.clock.advance(seconds=60)
    assert cancels(world.tick()) == {b: "timed_out"}
    assert world.show(started["id"])["counts"] == {"timed_out": 2}
    # Chunks are refused once timed out; a late confirmation is still the truth.
    refused = world.send((a, FirmwareChunkRequest(job_id=offered[a], index=0, count=1)))
    assert not of_type(refused, FirmwareChunk)
    confirm(world, a, offered[a])
    assert world.job_of(started["id"], a)["state"] == "confirmed"
    assert_deadlines(world)


def test_offers_only_inside_maintenance_windows(world: World) -> None:
    package = world.package("1.0.0")
    (device,) = fleet(world, 1)
    # The clock is Tuesday 2030-01-01 12:00 UTC.
    started = world.start(
        package["id"], maintenance_windows=[{"days": ["wed"], "start": "02:00", "end": "03:00"}]
    )
    assert world.tick() == []
    assert not offers(world.send((device, FirmwareQuery(installed_seq=0))))
    world.clock.advance(hours=14, minutes=30)  # Wednesday 02:30
    assert set(offers(world.tick())) == {device}
    assert world.show(started["id"])["maintenance_windows"][0]["days"] == ["wed"]


def test_pause_resume_cancel(world: World) -> None:
    package = world.package("1.0.0")
    fleet(world, 4)
    started = world.start(package["id"], waves=[{"size": 2}, {"size": 2}], success_percent=100)
    rid = started["id"]
    paused = world.ok(world.post(f"/firmware/rollouts/{rid}/pause", {"reason": "weekend"}))
    assert (paused["state"], paused["state_reason"]) == ("paused", "weekend")
    assert world.tick() == []
    assert world.post(f"/firmware/rollouts/{rid}/pause").status_code == 409
    world.ok(world.post(f"/firmware/rollouts/{rid}/resume"))
    first = list(offers(world.tick()).items())
    report(world, *first[0], "installing")
    cancelled = world.ok(world.post(f"/firmware/rollouts/{rid}/cancel"))
    assert cancelled["state"] == "cancelled" and cancelled["finished_at"]
    assert cancelled["counts"] == {"cancelled": 3, "installing": 1}
    assert world.tick() == []
    for action in ("resume", "pause", "start", "cancel", "retry"):
        response = world.post(f"/firmware/rollouts/{rid}/{action}")
        assert (response.status_code, response.json()["error"]) == (409, "invalid_state"), action
    assert_deadlines(world)


def test_retry_gives_failed_devices_a_new_attempt(world: World) -> None:
    package = world.package("1.0.0")
    fleet(world, 3)
    started = world.start(
        package["id"], failure_percent=100, failure_min_sample=100, success_percent=1
    )
    rid = started["id"]
    offered = list(offers(world.tick()).items())
    confirm(world, *offered[0])
    report(world, *offered[1], "failed")
    report(world, *offered[2], "reverted")
    world.tick()
    assert world.show(rid)["state"] == "completed"
    retried = world.ok(world.post(f"/firmware/rollouts/{rid}/retry"))
    assert retried["retried"] == 2 and retried["rollout"]["state"] == "running"
    again = offers(world.tick())
    assert set(again) == {offered[1][0], offered[2][0]}
    assert not set(again.values()) & {offered[1][1], offered[2][1]}  # fresh job ids
    jobs = world.jobs(rid, include_retired="true")
    assert sorted(j["attempt"] for j in jobs) == [1, 1, 1, 2, 2]
    # The old job id is no longer active: its chunks are refused, its query cancelled.
    replies = world.send((offered[1][0], FirmwareQuery(installed_seq=0, job_id=offered[1][1])))
    assert cancels(replies) == {offered[1][0]: "superseded"}
    assert offers(replies) == {offered[1][0]: again[offered[1][0]]}
    for device, job in again.items():
        confirm(world, device, job)
    world.tick()
    assert world.show(rid)["counts"] == {"confirmed": 3}


def test_targets_follow_the_filter_and_skip_devices_that_must_not_get_it(world: World) -> None:
    first = world.package("1.0.0", gated=False)
    target = world.package("1.1.0")
    tagged = fleet(world, 2, tags=["beta", "eu"])
    fleet(world, 1, tags=["beta"])  # lacks "eu": not a candidate
    up_to_date = world.device(tags=["beta", "eu"])[0]
    world.send((up_to_date, FirmwareQuery(installed_seq=target["sequence"])))
    busy = world.device(tags=["beta", "eu", "hold"])[0]
    held = world.start(first["id"], filter={"tags": ["hold"]})
    assert [j["device_id"] for j in world.jobs(held["id"])] == [busy]
    disabled = world.device(tags=["beta", "eu"])[0]
    world.fleet().set_status(disabled, "disabled")  # not claimed: never a candidate
    world.device(tags=["beta", "eu"], entitled=False)
    world.device(tags=["beta", "eu"], class_id=world.other_class())  # another class: never
    started = world.start(target["id"], filter={"tags": ["beta", "eu"]})
    assert {j["device_id"] for j in world.jobs(started["id"])} == set(tagged)
    assert started["skipped"] == {"up_to_date": 1, "busy": 1, "not_entitled": 1}
    assert started["filter"]["tags"] == ["beta", "eu"]


def test_account_and_version_filters(world: World) -> None:
    first = world.package("1.0.0", gated=False)
    a, b = fleet(world, 2)
    c = world.device(entitled=False)[0]
    world.send((a, FirmwareQuery(installed_seq=first["sequence"])))
    second = world.package("1.1.0", gated=False)
    by_version = world.start(second["id"], filter={"current_versions": ["1.0.0"]})
    assert [j["device_id"] for j in world.jobs(by_version["id"])] == [a]
    world.ok(world.post(f"/firmware/rollouts/{by_version['id']}/cancel"))
    by_account = world.start(second["id"], filter={"account_id": world.account_id})
    assert {j["device_id"] for j in world.jobs(by_account["id"])} == {a, b}
    assert c not in {j["device_id"] for j in world.jobs(by_account["id"])}


def test_offer_time_checks_cancel_jobs_that_must_not_be_offered(world: World) -> None:
    package = world.package("1.0.0")
    a, b, c = fleet(world, 3)
    started = world.start(
        package["id"], maintenance_windows=[{"days": ["wed"], "start": "02:00", "end": "03:00"}]
    )
    # Before the window opens: a loses its entitlement, b reports it already runs it,
    # c is moved to another class (not possible over the API; a database edit here).
    world.revoke_all()
    world.entitle(b)
    world.entitle(c)
    world.send((b, FirmwareQuery(installed_seq=package["sequence"])))
    other_class = world.other_class()
    with world.factory() as s:
        s.execute(update(Device).where(Device.id == c).values(device_class_id=other_class))
        s.commit()
    world.clock.advance(hours=14, minutes=30)
    assert offers(world.tick()) == {}
    reasons = {j["device_id"]: j["reason"] for j in world.jobs(started["id"])}
    assert reasons == {a: "not_entitled", b: "already_installed", c: "wrong_class"}
    world.tick()
    assert world.show(started["id"])["state"] == "completed"


def test_rollout_definitions_are_validated(world: World, other_tenant: Any) -> None:
    package = world.package("1.0.0")
    bad = [
        {"waves": [{"percent": 60}, {"percent": 60}]},
        {"waves": [{"percent": 10, "size": 3}]},
        {"waves": []},
        {"success_percent": 0},
        {"failure_action": "explode"},
        {"device_timeout_seconds": 1},
        {"maintenance_windows": [{"start": "02:00", "end": "02:00"}]},
        {"maintenance_windows": [{"start": "2am", "end": "03:00"}]},
        {"filter": {"tags": ["no/slash"]}},
    ]
    for body in bad:
        response = world.post(
            "/firmware/rollouts", {"name": "r", "package_id": package["id"], **body}
        )
        assert response.status_code == 422, body
    unknown = world.post("/firmware/rollouts", {"name": "r", "package_id": "nope"})
    assert (unknown.status_code, unknown.json()["error"]) == (422, "unknown_package")
    account = world.post(
        "/firmware/rollouts",
        {"name": "r", "package_id": package["id"], "filter": {"account_id": "x"}},
    )
    assert (account.status_code, account.json()["error"]) == (422, "invalid_rollout")
    created = world.rollout(package["id"])
    foreign = {"Authorization": f"Bearer {other_tenant.admin}"}
    assert (
        world.client.get(f"/api/v1/firmware/rollouts/{created['id']}", headers=foreign).status_code
        == 404
    )
    assert (
        world.client.post(
            f"/api/v1/firmware/rollouts/{created['id']}/start", headers=foreign
        ).status_code
        == 404
    )
    body = {"name": "r", "package_id": package["id"]}
    assert (
        world.client.post("/api/v1/firmware/rollouts", json=body, headers=foreign).json()["error"]
        == "unknown_package"
    )
    assert world.post("/firmware/rollouts", body, role="viewer").status_code == 403
    listed = world.ok(world.get("/firmware/rollouts", state="draft"))
    assert [r["id"] for r in listed["items"]] == [created["id"]]


def test_a_rollout_without_targets_completes_at_once(world: World) -> None:
    package = world.package("1.0.0")
    world.device(entitled=False)
    started = world.start(package["id"])
    assert started["state"] == "completed" and started["target_count"] == 0
    assert started["skipped"] == {"not_entitled": 1}


def test_engine_pass_failures_are_contained(world: World, monkeypatch: Any) -> None:
    package = world.package("1.0.0")
    fleet(world, 1)
    started = world.start(package["id"])
    from hub.rollouts import jobs

    def boom(*_a: Any, **_k: Any) -> Any:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(jobs, "offer_jobs", boom)
    assert world.tick() == []  # logged, rolled back
    monkeypatch.undo()
    assert len(offers(world.tick())) == 1
    assert world.show(started["id"])["counts"] == {"offered": 1}


def test_offers_go_out_in_bounded_transactions_each_published_after_its_commit(
    world: World,
) -> None:
    package = world.package("1.0.0", os.urandom(2000))
    fleet(world, 7)
    started = world.start(package["id"])
    batches: list[tuple[int, dict[str, int]]] = []

    def publish(out: Any) -> None:
        # What the database holds when a batch is published: its offers are committed.
        batches.append((len(out), world.show(started["id"])["counts"]))

    engine = RolloutEngine(
        session_factory=world.factory, clock=world.clock, publish=publish, offer_batch=3
    )
    engine.step(started["id"])
    assert batches == [
        (3, {"offered": 3, "pending": 4}),
        (3, {"offered": 6, "pending": 1}),
        (1, {"offered": 7}),
    ]


def test_a_device_abandoning_a_cancelled_job_is_not_a_failed_install(world: World) -> None:
    package = world.package("1.0.0")
    a, b = fleet(world, 2)
    started = world.start(package["id"], failure_percent=0, failure_min_sample=1)
    offered = offers(world.tick())
    world.revoke_all()
    world.entitle(b)  # only a loses the product
    replies = world.send((a, FirmwareQuery(installed_seq=0, job_id=offered[a])))
    assert cancels(replies) == {a: "not_entitled"}
    report(world, a, offered[a], "failed", reason="cancelled: not_entitled")
    world.tick()
    shown = world.show(started["id"])
    assert shown["state"] == "running", shown["state_reason"]  # any real failure would pause
    assert world.job_of(started["id"], a)["state"] == "cancelled"
    report(world, b, offered[b], "failed", reason="flash write error")
    world.tick()
    assert world.show(started["id"])["state"] == "paused"
