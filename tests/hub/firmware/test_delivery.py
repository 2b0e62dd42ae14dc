"""MQTT delivery: offers, chunk requests and their refusals, step reports, queries."""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from hub.firmware import delivery
from hub.firmware.delivery import FirmwareHandler
from hub.firmware.gate import entitled_devices
from hub.rollouts.models import FirmwareReport as ReportRow
from protocols import suit
from protocols.firmware_messages import (
    FirmwareCancel,
    FirmwareChunk,
    FirmwareChunkRequest,
    FirmwareOffer,
    FirmwareQuery,
    FirmwareReport,
    FirmwareReportAck,
)
from protocols.messages import ErrorReply
from tests.hub.firmware.world import World, of_type

PAYLOAD = os.urandom(5000)  # five chunks of 1 KiB, the last one 904 bytes


def _offered(
    world: World, *, devices: int = 1, **rollout: Any
) -> tuple[dict[str, Any], list[str], dict[str, FirmwareOffer]]:
    package = world.package("1.0.0", PAYLOAD)
    ids = [world.device()[0] for _ in range(devices)]
    started = world.start(package["id"], **rollout)
    offers = {d: m for d, m in world.tick() if isinstance(m, FirmwareOffer)}
    return started, ids, offers


def _error(replies: list[Any]) -> str:
    errors = of_type(replies, ErrorReply)
    assert len(errors) == 1 and not of_type(replies, FirmwareChunk), replies
    return str(errors[0].code)


def _report(job_id: str, step: str, key: str, **extra: Any) -> FirmwareReport:
    extra.setdefault("at", 1_900_000_000)
    return FirmwareReport(job_id=job_id, step=step, key=key, **extra)


def test_offered_chunks_verify_against_the_signed_envelope(world: World) -> None:
    _, [device], offers = _offered(world)
    offer = offers[device]
    assert offer.chunk_size == 1024
    assert offer.http_path == f"/api/v1/device/firmware/{offer.job_id}/payload"
    manifest = world.manifest(offer.envelope)
    replies = world.send((device, FirmwareChunkRequest(job_id=offer.job_id, index=0, count=16)))
    chunks = of_type(replies, FirmwareChunk)
    assert [c.index for c in chunks] == [0, 1, 2, 3, 4]  # capped at the chunk count
    for chunk in chunks:
        assert chunk.job_id == offer.job_id
        suit.verify_chunk(manifest, chunk.index, chunk.data)
    suit.verify_image(manifest, b"".join(c.data for c in chunks))
    # Resume from a later index, as after a disconnect: only what is asked for.
    again = of_type(
        world.send((device, FirmwareChunkRequest(job_id=offer.job_id, index=3, count=1))),
        FirmwareChunk,
    )
    assert [(c.index, c.data) for c in again] == [(3, PAYLOAD[3072:4096])]


def test_chunk_of_another_job_or_a_tampered_chunk_fails_verification_on_arrival(
    world: World,
) -> None:
    _, [device], offers = _offered(world)
    manifest = world.manifest(offers[device].envelope)
    chunk = PAYLOAD[1024:2048]
    with pytest.raises(suit.SuitChunkMismatch):
        suit.verify_chunk(manifest, 0, chunk)  # the right bytes at the wrong index
    with pytest.raises(suit.SuitChunkSize):
        suit.verify_chunk(manifest, 1, chunk + b"x")  # oversize
    with pytest.raises(suit.SuitChunkSize):
        suit.verify_chunk(manifest, 1, chunk[:-1])  # truncated
    with pytest.raises(suit.SuitChunkOutOfRange):
        suit.verify_chunk(manifest, 5, chunk)


def test_chunk_request_refusals(world: World) -> None:
    _, [device, other], offers = _offered(world, devices=2)
    job, other_job = offers[device].job_id, offers[other].job_id
    ask = lambda d, j, i=0: world.send((d, FirmwareChunkRequest(job_id=j, index=i, count=2)))  # noqa: E731
    assert _error(ask(device, "job-" + "0" * 24)) == "unknown_job"
    assert _error(ask(device, other_job)) == "unknown_job"  # never reveal others' jobs
    assert _error(ask(device, job, 5)) == "chunk_out_of_range"
    assert _error(ask(device, job, 2**40)) == "chunk_out_of_range"
    replies = ask(device, job)
    error = of_type(replies, ErrorReply)
    assert not error and len(of_type(replies, FirmwareChunk)) == 2
    world.send((device, _report(job, "failed", "k-fail", reason="flash error")))
    assert _error(ask(device, job)) == "job_not_active"
    # Errors travel on the device's error topic and name the refused topic.
    topic_replies = world.router().handle_batch([])  # an empty batch answers nothing
    assert topic_replies.outbound == []


def test_a_flood_of_bogus_requests_gets_a_bounded_number_of_replies(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    _, [flooder, other], offers = _offered(world, devices=2)
    cap = delivery.MAX_ERRORS_PER_DEVICE
    bogus = [
        (flooder, FirmwareChunkRequest(job_id=f"job-{n:024x}", index=0, count=1))
        for n in range(cap * 5)
    ]
    own = (other, FirmwareChunkRequest(job_id=offers[flooder].job_id, index=0, count=1))
    valid = (flooder, FirmwareChunkRequest(job_id=offers[flooder].job_id, index=0, count=1))
    with caplog.at_level("INFO", logger=delivery.__name__):
        replies = world.send(*bogus, own, valid)
    errors = [(device, m.code) for device, m in replies if isinstance(m, ErrorReply)]
    assert [code for device, code in errors if device == flooder] == ["unknown_job"] * cap
    assert [code for device, code in errors if device == other] == ["unknown_job"]
    assert _chunks(replies) == [(flooder, 0)]  # its valid request is still served
    refusals = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == cap + 1 + 1  # the flooder's, the other's, one summary
    assert f"{cap * 4} more firmware messages from {flooder}" in refusals[-1].getMessage()


def test_unentitled_device_is_refused_chunks_at_request_time(world: World) -> None:
    _, [device], offers = _offered(world)
    job = offers[device].job_id
    assert of_type(
        world.send((device, FirmwareChunkRequest(job_id=job, index=0, count=1))), FirmwareChunk
    )
    world.revoke_all()
    assert (
        _error(world.send((device, FirmwareChunkRequest(job_id=job, index=0, count=1))))
        == "not_entitled"
    )


def test_feature_gate(world: World) -> None:
    package = world.package("1.0.0", PAYLOAD, required_feature="ota")
    device, _ = world.device()
    rollout = world.start(package["id"])
    offer = of_type(world.tick(), FirmwareOffer)[0]
    assert rollout["target_count"] == 1
    # Switch the feature off for this device's entitlement: the gate closes.
    world.ok(
        world.client.patch(
            f"/api/v1/entitlements/{world.entitlement()}",
            json={"feature_overrides": {"ota": {"enabled": False}}},
            headers=world.headers(),
        )
    )
    refused = world.send((device, FirmwareChunkRequest(job_id=offer.job_id, index=0, count=1)))
    assert _error(refused) == "not_entitled"


def test_batch_byte_budget_caps_what_one_batch_answers(world: World) -> None:
    _, [a, b], offers = _offered(world, devices=2)
    handler = FirmwareHandler(store=world.store, batch_bytes=3 * 1024)
    replies = world.send(
        (a, FirmwareChunkRequest(job_id=offers[a].job_id, index=0, count=2)),
        (b, FirmwareChunkRequest(job_id=offers[b].job_id, index=0, count=4)),
        handler=handler,
    )
    got = [(d, m.index) for d, m in replies if isinstance(m, FirmwareChunk)]
    assert got == [(a, 0), (a, 1), (b, 0)]  # b got what was left now
    assert handler.backlog == 1  # the rest of b's request is held over, not dropped


def _chunks(replies: list[Any]) -> list[tuple[str, int]]:
    return [(d, m.index) for d, m in replies if isinstance(m, FirmwareChunk)]


def test_requests_over_the_budget_are_served_by_the_next_call_in_arrival_order(
    world: World,
) -> None:
    _, [a, b], offers = _offered(world, devices=2)
    handler = FirmwareHandler(store=world.store, batch_bytes=2 * 1024)
    first = world.send(
        (a, FirmwareChunkRequest(job_id=offers[a].job_id, index=0, count=3)),
        (b, FirmwareChunkRequest(job_id=offers[b].job_id, index=0, count=2)),
        (b, FirmwareChunkRequest(job_id=offers[b].job_id, index=2, count=1)),
        handler=handler,
    )
    assert _chunks(first) == [(a, 0), (a, 1)]
    assert handler.backlog == 3  # a's third chunk, then b's two requests
    assert world.router(handler).has_backlog  # the adapter serves it at once
    assert world.router(handler).handle_batch([]).outbound == []  # e.g. the claim client's
    assert handler.backlog == 3
    # The next call serves the held-over requests first, even when it brings nothing new.
    second = world.drain(handler)
    assert _chunks(second) == [(a, 2), (b, 0)]
    third = world.send(
        (a, FirmwareChunkRequest(job_id=offers[a].job_id, index=3, count=1)), handler=handler
    )
    assert _chunks(third) == [(b, 1), (b, 2)]  # b's older requests before a's new one
    assert _chunks(world.drain(handler)) == [(a, 3)]
    assert handler.backlog == 0 and not world.router(handler).has_backlog
    assert world.drain(handler) == []


def test_a_budget_smaller_than_a_chunk_still_serves_one_chunk_per_call(world: World) -> None:
    _, [device], offers = _offered(world)
    handler = FirmwareHandler(store=world.store, batch_bytes=100)
    request = FirmwareChunkRequest(job_id=offers[device].job_id, index=0, count=2)
    assert _chunks(world.send((device, request), handler=handler)) == [(device, 0)]
    assert _chunks(world.drain(handler)) == [(device, 1)]


def test_held_over_requests_are_checked_again_when_served(world: World) -> None:
    started, [a, b, c], offers = _offered(world, devices=3)
    handler = FirmwareHandler(store=world.store, batch_bytes=1024)
    world.send(
        (a, FirmwareChunkRequest(job_id=offers[a].job_id, index=0, count=1)),
        (b, FirmwareChunkRequest(job_id=offers[b].job_id, index=0, count=1)),
        (c, FirmwareChunkRequest(job_id=offers[c].job_id, index=0, count=1)),
        handler=handler,
    )
    assert handler.backlog == 2
    world.send((b, _report(offers[b].job_id, "failed", "k-b", reason="flash")))
    world.fleet().set_status(c, "disabled")
    replies = world.drain(handler)
    assert _error(replies) == "job_not_active"  # b's job ended meanwhile
    assert [d for d, _ in replies] == [b]  # c is no longer claimed: dropped, unanswered
    assert handler.backlog == 0
    assert world.job_of(started["id"], b)["state"] == "failed"


def test_a_request_asked_again_while_held_over_is_held_once_and_the_backlog_is_bounded(
    world: World,
) -> None:
    _, [a, b], offers = _offered(world, devices=2)
    handler = FirmwareHandler(store=world.store, batch_bytes=1024, max_backlog=2)
    ask_a = FirmwareChunkRequest(job_id=offers[a].job_id, index=1, count=2)
    world.send(
        (a, FirmwareChunkRequest(job_id=offers[a].job_id, index=0, count=1)),
        (a, ask_a),
        (a, ask_a),  # the device timed out and asked again: one entry
        (b, FirmwareChunkRequest(job_id=offers[b].job_id, index=0, count=1)),
        (b, FirmwareChunkRequest(job_id=offers[b].job_id, index=1, count=1)),  # over the bound
        handler=handler,
    )
    assert handler.backlog == 2
    served = []
    for _ in range(4):
        served += _chunks(world.drain(handler))
    assert served == [(a, 1), (a, 2), (b, 0)]  # b's second request was dropped: it asks again


def test_invalid_requests_behind_the_budget_are_refused_at_once_not_held(world: World) -> None:
    _, [a, b], offers = _offered(world, devices=2)
    handler = FirmwareHandler(store=world.store, batch_bytes=1024)
    replies = world.send(
        (a, FirmwareChunkRequest(job_id=offers[a].job_id, index=0, count=2)),  # 1 over budget
        (a, FirmwareChunkRequest(job_id="job-" + "0" * 24, index=0, count=1)),
        (a, FirmwareChunkRequest(job_id=offers[b].job_id, index=0, count=1)),  # b's job
        (a, FirmwareChunkRequest(job_id=offers[a].job_id, index=99, count=1)),
        handler=handler,
    )
    assert _chunks(replies) == [(a, 0)]
    codes = [m.code for _, m in replies if isinstance(m, ErrorReply)]
    assert codes == ["unknown_job", "unknown_job", "chunk_out_of_range"]
    assert handler.backlog == 1  # only the rest of the valid request waits


def test_held_requests_are_served_round_robin_per_device(world: World) -> None:
    _, [a, b], offers = _offered(world, devices=2)
    handler = FirmwareHandler(store=world.store, batch_bytes=1024)
    world.send(
        *[(a, FirmwareChunkRequest(job_id=offers[a].job_id, index=i, count=1)) for i in range(4)],
        (b, FirmwareChunkRequest(job_id=offers[b].job_id, index=0, count=1)),
        handler=handler,
    )
    served = []
    for _ in range(5):
        served += _chunks(world.drain(handler))
    assert served == [(a, 1), (b, 0), (a, 2), (a, 3)]  # b is not behind all of a's


def test_overlapping_requests_are_held_once_and_each_device_job_is_capped(world: World) -> None:
    _, [a, b], offers = _offered(world, devices=2)
    handler = FirmwareHandler(store=world.store, batch_bytes=1024, max_held_per_job=3)
    ask_a = (a, FirmwareChunkRequest(job_id=offers[a].job_id, index=0, count=2))
    world.send(
        ask_a,  # chunk 0 served, (1, 1) held
        (a, FirmwareChunkRequest(job_id=offers[a].job_id, index=0, count=3)),  # a probe: 0, 2
        (a, FirmwareChunkRequest(job_id=offers[a].job_id, index=1, count=4)),  # cap: none more
        (b, FirmwareChunkRequest(job_id=offers[b].job_id, index=0, count=1)),
        handler=handler,
    )
    assert handler.backlog == 4  # a: (1, 1), (0, 1), (2, 1): its cap of 3 chunks; b: (0, 1)
    served = []
    for _ in range(6):
        served += _chunks(world.drain(handler))
    assert sorted(served) == sorted([(a, 0), (a, 1), (a, 2), (b, 0)])  # none held twice


def test_a_failed_call_puts_the_backlog_it_took_back(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, [a], offers = _offered(world)
    handler = FirmwareHandler(store=world.store, batch_bytes=1024)
    world.send(
        (a, FirmwareChunkRequest(job_id=offers[a].job_id, index=0, count=3)), handler=handler
    )
    assert handler.backlog == 1  # (1, 2)

    def outage(*_: Any) -> dict[str, Any]:
        raise OperationalError("SELECT", {}, Exception("connection lost"))

    monkeypatch.setattr(delivery, "_claimed", outage)
    with pytest.raises(OperationalError):
        world.drain(handler)  # the adapter retries the batch
    assert handler.backlog == 1
    monkeypatch.undo()

    def defect(*_: Any) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(handler, "_send_chunks", defect)
    assert world.drain(handler) == []  # nobody to answer: the call brought no message
    assert handler.backlog == 1  # the work is kept
    monkeypatch.undo()
    assert _chunks(world.drain(handler)) == [(a, 1)]
    assert _chunks(world.drain(handler)) == [(a, 2)]
    assert handler.backlog == 0


def test_a_backlog_that_fails_every_call_is_dropped_not_retried_forever(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, [a], offers = _offered(world)
    handler = FirmwareHandler(store=world.store, batch_bytes=1024)
    world.send(
        (a, FirmwareChunkRequest(job_id=offers[a].job_id, index=0, count=3)), handler=handler
    )

    def defect(*_: Any) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(handler, "_send_chunks", defect)
    for _ in range(delivery.MAX_RESTORES):
        world.drain(handler)
        assert handler.backlog == 1
    world.drain(handler)
    assert handler.backlog == 0


def test_a_full_gate_cache_does_not_refuse_a_device_entitled_in_the_same_call(
    world: World,
) -> None:
    _, [a, b, c], offers = _offered(world, devices=3)
    handler = FirmwareHandler(store=world.store, gate_cache_entries=2)

    def ask(device: str) -> tuple[str, FirmwareChunkRequest]:
        return (device, FirmwareChunkRequest(job_id=offers[device].job_id, index=0, count=1))

    world.send(ask(a), ask(b), handler=handler)  # both passes cached: the cache is full
    world.clock.advance(seconds=0.5)
    # c's pass evicts one of them after the call planned its gate evaluation without a, b.
    replies = world.send(ask(c), ask(a), ask(b), handler=handler)
    assert _chunks(replies) == [(c, 0), (a, 0), (b, 0)]
    assert not of_type(replies, ErrorReply)


def test_a_gate_pass_is_trusted_for_the_ttl_only(world: World) -> None:
    _, [device], offers = _offered(world)
    handler = FirmwareHandler(store=world.store, gate_ttl=timedelta(seconds=1))
    ask = (device, FirmwareChunkRequest(job_id=offers[device].job_id, index=0, count=1))
    assert _chunks(world.send(ask, handler=handler)) == [(device, 0)]
    world.revoke_all()
    world.clock.advance(seconds=0.5)
    assert _chunks(world.send(ask, handler=handler)) == [(device, 0)]  # within the TTL
    world.clock.advance(seconds=0.6)
    assert _error(world.send(ask, handler=handler)) == "not_entitled"


def test_without_the_gate_cache_the_next_request_is_refused(world: World) -> None:
    _, [device], offers = _offered(world)
    handler = FirmwareHandler(store=world.store, gate_ttl=timedelta(0))
    ask = (device, FirmwareChunkRequest(job_id=offers[device].job_id, index=0, count=1))
    assert _chunks(world.send(ask, handler=handler)) == [(device, 0)]
    world.revoke_all()
    assert _error(world.send(ask, handler=handler)) == "not_entitled"


def test_a_query_batch_evaluates_the_gate_for_every_querying_device(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, [a, b], offers = _offered(world, devices=2)
    world.revoke_all()
    world.entitlement()  # a new entitlement, activated for the device made next only
    c, _ = world.device()
    evaluations: list[list[str]] = []

    def counted(session: Any, device_ids: Any, gate: Any, now: Any) -> set[str]:
        evaluations.append(sorted(device_ids))
        return entitled_devices(session, device_ids, gate, now)

    monkeypatch.setattr(delivery, "entitled_devices", counted)
    replies = world.send(
        (a, FirmwareQuery(installed_seq=0, job_id=offers[a].job_id)),
        (b, FirmwareQuery(installed_seq=0, job_id=offers[b].job_id)),
    )
    assert evaluations == [sorted([a, b])]  # one evaluation for the whole batch
    cancels = of_type(replies, FirmwareCancel)
    assert sorted(m.job_id for m in cancels) == sorted(offers[x].job_id for x in (a, b))
    assert {m.reason for m in cancels} == {"not_entitled"}
    assert not of_type(replies, FirmwareOffer) and c not in {d for d, _ in replies}


def _report_rows(world: World, device: str) -> int:
    with world.factory() as s:
        return (
            s.scalar(
                select(func.count()).select_from(ReportRow).where(ReportRow.device_id == device)
            )
            or 0
        )


def test_reports_are_stored_once_and_acknowledged_after_commit(world: World) -> None:
    started, [device], offers = _offered(world)
    job = offers[device].job_id
    replies = world.send(
        (device, _report(job, "downloading", "k1")), (device, _report(job, "downloading", "k1"))
    )
    acks = of_type(replies, FirmwareReportAck)
    assert [a.keys for a in acks] == [("k1", "k1")]
    assert _report_rows(world, device) == 1
    assert world.job_of(started["id"], device)["state"] == "downloading"
    # A replay in a later batch is acknowledged again and not re-applied.
    world.send((device, _report(job, "verified", "k2")))
    replay = world.send((device, _report(job, "downloading", "k1")))
    assert [a.keys for a in of_type(replay, FirmwareReportAck)] == [("k1",)]
    assert _report_rows(world, device) == 2
    assert world.job_of(started["id"], device)["state"] == "verified"
    # Out of order: a late "downloaded" after "verified" is kept but changes nothing.
    world.send((device, _report(job, "downloaded", "k3")))
    assert world.job_of(started["id"], device)["state"] == "verified"
    with world.factory() as s:
        row = s.scalar(
            select(ReportRow).where(ReportRow.key == "k3", ReportRow.device_id == device)
        )
        assert row is not None and row.applied is False


def test_reports_for_unknown_or_foreign_jobs_are_refused_and_not_stored(world: World) -> None:
    _, [device, other], offers = _offered(world, devices=2)
    for job in ("job-" + "f" * 24, offers[other].job_id):
        replies = world.send((device, _report(job, "confirmed", f"k-{job}")))
        assert _error(replies) == "unknown_job"
        assert not of_type(replies, FirmwareReportAck)
    assert _report_rows(world, device) == 0
    assert (
        _error(
            world.send((device, _report(offers[device].job_id, "downloading", "k", at=2**64 - 1)))
        )
        == "invalid_message"
    )


def test_confirmed_records_the_installed_version(world: World) -> None:
    started, [device], offers = _offered(world)
    job = offers[device].job_id
    for n, step in enumerate(
        ("downloading", "downloaded", "verified", "installing", "rebooting", "confirmed")
    ):
        world.send((device, _report(job, step, f"s{n}")))
    firmware = world.ok(world.get(f"/devices/{device}/firmware"))
    assert (firmware["installed_version"], firmware["installed_seq"]) == ("1.0.0", 1)
    assert firmware["jobs"][0]["state"] == "confirmed"
    assert firmware["jobs"][0]["deadline_at"] is None
    audit = world.ok(world.get("/audit", action="firmware.job.state", target_id=job, role="admin"))
    assert [e["detail"]["to"] for e in reversed(audit["items"])] == [
        "offered",
        "downloading",
        "downloaded",
        "verified",
        "installing",
        "rebooting",
        "confirmed",
    ]
    assert world.show(started["id"])["counts"] == {"confirmed": 1}
    installed = world.ok(
        world.get("/audit", action="firmware.device.installed", target_id=device, role="admin")
    )
    assert [(e["detail"]["seq"], e["detail"]["version"]) for e in installed["items"]] == [
        (1, "1.0.0")
    ]
    # The device saying so again changes nothing, and writes nothing.
    world.send((device, FirmwareQuery(installed_seq=1)))
    assert (
        world.ok(
            world.get("/audit", action="firmware.device.installed", target_id=device, role="admin")
        )["total"]
        == 1
    )


def test_query_resends_the_offer_and_cancels_stale_jobs(world: World) -> None:
    started, [device], offers = _offered(world)
    job = offers[device].job_id
    replies = world.send((device, FirmwareQuery(installed_seq=0, job_id=job)))
    assert [m.job_id for m in of_type(replies, FirmwareOffer)] == [job]
    assert not of_type(replies, FirmwareCancel)
    unknown = world.send((device, FirmwareQuery(installed_seq=0, job_id="job-" + "a" * 24)))
    assert [(c.reason, c.job_id) for c in of_type(unknown, FirmwareCancel)] == [
        ("unknown_job", "job-" + "a" * 24)
    ]
    world.ok(world.post(f"/firmware/rollouts/{started['id']}/cancel"))
    cancelled = world.send((device, FirmwareQuery(installed_seq=0, job_id=job)))
    assert [c.reason for c in of_type(cancelled, FirmwareCancel)] == ["cancelled"]
    assert not of_type(cancelled, FirmwareOffer)


def test_query_offers_a_pending_job_at_once_and_records_the_installed_sequence(
    world: World,
) -> None:
    package = world.package("1.0.0", PAYLOAD)
    device, _ = world.device()
    started = world.start(package["id"])  # no engine pass yet: the job is pending
    assert world.job_of(started["id"], device)["state"] == "pending"
    replies = world.send((device, FirmwareQuery(installed_seq=0)))
    assert len(of_type(replies, FirmwareOffer)) == 1
    assert world.job_of(started["id"], device)["state"] == "offered"
    assert world.tick() == []  # nothing left to offer
    world.send((device, FirmwareQuery(installed_seq=7)))
    firmware = world.ok(world.get(f"/devices/{device}/firmware"))
    assert (firmware["installed_seq"], firmware["installed_version"]) == (7, None)


def test_unentitled_device_never_gets_an_offer(world: World) -> None:
    package = world.package("1.0.0", PAYLOAD)
    entitled, _ = world.device()
    outsider, _ = world.device(entitled=False)
    started = world.start(package["id"])
    assert started["target_count"] == 1 and started["skipped"] == {"not_entitled": 1}
    offers = of_type(world.tick(), FirmwareOffer)
    assert len(offers) == 1
    assert not of_type(world.send((outsider, FirmwareQuery(installed_seq=0))), FirmwareOffer)
    refused = world.send(
        (outsider, FirmwareChunkRequest(job_id=offers[0].job_id, index=0, count=1))
    )
    assert _error(refused) == "unknown_job"
    assert [j["device_id"] for j in world.jobs(started["id"])] == [entitled]


def test_messages_that_do_not_belong_on_the_firmware_topic(world: World) -> None:
    device, _ = world.device()
    replies = world.send((device, FirmwareCancel(job_id="job-" + "0" * 24, reason="x")))
    assert _error(replies) == "invalid_message"
