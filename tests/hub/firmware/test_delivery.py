"""MQTT delivery: offers, chunk requests and their refusals, step reports, queries."""

from __future__ import annotations

import os
from typing import Any

import pytest
from sqlalchemy import func, select

from hub.firmware.delivery import FirmwareHandler
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
    assert got == [(a, 0), (a, 1), (b, 0)]  # b got what was left; it asks again later


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
