"""FirmwareComponent against a fake hub: offers, verified chunks, install, reports."""

from __future__ import annotations

import dataclasses
import logging

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from device_agent.firmware.install import Step
from device_agent.firmware.records import OfferFile, RollbackStore
from protocols.firmware_messages import (
    FirmwareCancel,
    FirmwareChunk,
    FirmwareChunkRequest,
    FirmwareQuery,
    FirmwareReport,
    FirmwareReportAck,
)
from protocols.messages import ErrorReply, Message, decode_as
from tests.device_agent.firmware.fakes import (
    CHUNK,
    CLASS,
    DEV,
    FACTORY,
    NEW,
    OTHER,
    VENDOR,
    Device,
    FakeHub,
    Job,
    make_job,
    settings,
    sha,
)

HAPPY = ["downloading", "downloaded", "verified", "installing", "rebooting", "confirmed"]
CHUNKS = -(-len(NEW) // CHUNK)


@pytest.fixture
def hub() -> FakeHub:
    return FakeHub()


@pytest.fixture
def device(tmp_path, hub) -> Device:
    dev = Device(tmp_path / "fw", hub)
    dev.provision()
    dev.power_on()
    return dev


def requests_of(device: Device) -> list[FirmwareChunkRequest]:
    return [m for m in device.published if isinstance(m, FirmwareChunkRequest)]


def reports_of(device: Device) -> list[FirmwareReport]:
    return [m for m in device.published if isinstance(m, FirmwareReport)]


def assert_untouched(device: Device) -> None:
    """Nothing was downloaded and the factory image still runs."""
    assert requests_of(device) == []
    assert not device.fw.slot_path("b").exists()
    assert device.component is not None
    assert device.component.active_slot == "a" and device.component.running_slot == "a"
    assert device.component.running_image() == FACTORY


def test_happy_path_over_the_query_and_chunk_requests(device, hub):
    job = make_job(1)
    hub.jobs.append(job)
    device.connect()
    component = device.component
    assert component is not None
    assert hub.queries[0] == FirmwareQuery(installed_seq=1)
    assert hub.steps(job.job_id) == HAPPY
    assert component.step is Step.CONFIRMED and component.installed_seq == 2
    assert component.active_slot == "b" == component.running_slot
    assert component.running_image() == NEW
    assert device.slot_digest("a") == sha(FACTORY)
    assert component.installer.state.outbox == ()  # every report acknowledged
    assert RollbackStore(device.root).installed == 2  # persisted at confirmation
    confirmed = [r for r in hub.reports if r.step == "confirmed"]
    assert confirmed[0].installed_seq == 2 and confirmed[0].reason is None
    assert [r.installed_seq for r in hub.reports if r.step == "downloading"] == [1]


def test_requests_ask_for_at_most_16_chunks_and_stay_inside_the_window(tmp_path):
    hub = FakeHub()
    image = bytes(range(256)) * 400  # 102400 bytes: 100 chunks
    dev = Device(tmp_path, hub, settings=settings(in_flight=40))
    dev.provision()
    dev.power_on()
    hub.jobs.append(make_job(1, image))
    dev.connect()
    requests = requests_of(dev)
    assert all(1 <= r.count <= 16 for r in requests)
    asked = sorted(i for r in requests for i in range(r.index, r.index + r.count))
    assert asked == list(range(100))  # each chunk asked once, none beyond the image
    assert dev.component is not None and dev.component.running_image() == image
    # every chunk request stayed within in_flight of the written prefix
    assert max(r.index + r.count for r in requests[:3]) <= 40


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        ({"vendor": OTHER}, "suit_wrong_device"),
        ({"klass": OTHER}, "suit_wrong_device"),
        ({"key": Ed25519PrivateKey.generate()}, "signature_invalid"),
        ({"kid": b"another"}, "unknown_key"),
    ],
)
def test_a_refused_envelope_is_reported_failed_before_any_byte(device, hub, overrides, code):
    job = make_job(1, **overrides)
    hub.jobs.append(job)
    device.connect()
    assert hub.steps(job.job_id) == ["failed"]
    assert hub.reports[0].reason is not None and hub.reports[0].reason.startswith(code)
    assert_untouched(device)
    assert not OfferFile(device.root).path.exists()


def test_rollback_and_reinstall_are_refused(tmp_path):
    hub = FakeHub()
    dev = Device(tmp_path, hub, factory_sequence=5)
    dev.provision()
    dev.power_on()
    old, same = make_job(1, sequence=3), make_job(2, sequence=5)
    hub.jobs += [old, same]
    dev.connect()
    dev.connect()
    assert hub.steps(old.job_id) == ["failed"] and hub.steps(same.job_id) == ["failed"]
    reasons = [r.reason or "" for r in hub.reports]
    assert reasons[0].startswith("suit_rollback") and reasons[1].startswith("suit_already")
    assert_untouched(dev)


def test_an_offer_whose_chunk_size_differs_from_the_manifest_is_refused(device, hub):
    job = dataclasses.replace(make_job(1), chunk_size=2048)
    hub.jobs.append(job)
    device.connect()
    assert hub.steps(job.job_id) == ["failed"]
    assert (hub.reports[0].reason or "").startswith("chunk_size_mismatch")
    assert_untouched(device)


def test_a_refused_offer_repeated_by_the_hub_is_reported_once(device, hub):
    job = make_job(1, klass=OTHER)
    hub.jobs.append(job)
    hub.ack_reports = False
    device.connect()
    device.offer(job)
    device.offer(job)
    assert len({r.key for r in hub.reports}) == 1


def flip(data: bytes, bit: int) -> bytes:
    raw = bytearray(data)
    raw[bit // 8] ^= 1 << (bit % 8)
    return bytes(raw)


def tamper_once(index: int, change) -> object:
    done = []

    def tamper(message: Message) -> list[Message]:
        if isinstance(message, FirmwareChunk) and message.index == index and not done:
            done.append(message)
            return change(message)
        return [message]

    return tamper


BAD_CHUNKS = {
    "corrupt": (lambda m: [dataclasses.replace(m, data=flip(m.data, 77))], "chunk_corrupt"),
    "oversize": (lambda m: [dataclasses.replace(m, data=m.data + b"x")], "chunk_size"),
    "truncated": (lambda m: [dataclasses.replace(m, data=m.data[:-1])], "chunk_size"),
    "foreign job": (
        lambda m: [dataclasses.replace(m, job_id="job-" + "f" * 24), m],
        "foreign_job",
    ),
    "out of range": (
        lambda m: [dataclasses.replace(m, index=CHUNKS), m],
        "chunk_out_of_range",
    ),
    "another index's bytes": (
        lambda m: [dataclasses.replace(m, data=NEW[:CHUNK])],
        "chunk_corrupt",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_CHUNKS))
def test_bad_chunks_are_refused_on_arrival_and_asked_again(device, hub, case, caplog):
    change, code = BAD_CHUNKS[case]
    hub.tamper = tamper_once(2, change)  # type: ignore[assignment]
    job = make_job(1)
    hub.jobs.append(job)
    with caplog.at_level(logging.WARNING, logger="device_agent.firmware.component"):
        device.connect()
    component = device.component
    assert component is not None
    assert component.refused_chunks == {code: 1}
    assert any(code in record.getMessage() for record in caplog.records)
    assert hub.steps(job.job_id) == HAPPY
    assert component.running_image() == NEW
    if code in ("chunk_corrupt", "chunk_size"):
        # the refused chunk was asked for again, alone
        assert FirmwareChunkRequest(job.job_id, 2, 1) in requests_of(device)


def test_nothing_unverified_is_ever_written(device, hub):
    """A refused chunk stops the slot at the verified prefix until it arrives intact."""
    job = make_job(1)
    hub.jobs.append(job)
    seen = []

    def corrupt_then_lose(message: Message) -> list[Message]:
        if not isinstance(message, FirmwareChunk) or message.index != 3:
            return [message]
        seen.append(message)
        return [dataclasses.replace(message, data=flip(message.data, 5))] if len(seen) == 1 else []

    hub.tamper = corrupt_then_lose
    device.connect()
    component = device.component
    assert component is not None and component.step is Step.DOWNLOADING
    device.tick(1)  # flushes the verified prefix
    assert component.installer.state.written == 3 * CHUNK
    assert device.fw.slot_path("b").read_bytes() == NEW[: 3 * CHUNK]
    hub.tamper = None
    device.tick(component.settings.chunk_timeout_seconds)
    assert component.step is Step.CONFIRMED and component.running_image() == NEW
    assert component.refused_chunks == {"chunk_corrupt": 1}


def test_a_chunk_that_never_arrives_intact_fails_the_job(device, hub):
    hub.jobs.append(make_job(1))
    hub.tamper = lambda m: (
        [dataclasses.replace(m, data=flip(m.data, 5))]
        if isinstance(m, FirmwareChunk) and m.index == 3
        else [m]
    )
    device.connect()
    component = device.component
    assert component is not None and component.step is Step.FAILED
    assert component.refused_chunks["chunk_corrupt"] == 17
    assert component.active_slot == "a" and component.running_image() == FACTORY


def test_a_flood_of_bad_chunks_fails_the_job_and_keeps_the_old_image(device, hub):
    hub.jobs.append(make_job(1))
    hub.tamper = lambda m: (
        [dataclasses.replace(m, data=flip(m.data, 1))] if isinstance(m, FirmwareChunk) else [m]
    )
    device.connect()
    component = device.component
    assert component is not None and component.step is Step.FAILED
    assert hub.steps(hub.jobs[0].job_id) == ["downloading", "failed"]
    assert "chunks refused" in (hub.reports[-1].reason or "")
    assert component.active_slot == "a" and component.running_image() == FACTORY


def test_resume_after_a_disconnect_starts_at_the_last_verified_chunk(device, hub):
    job = make_job(1)
    hub.jobs.append(job)
    sent = []

    def cut(message: Message) -> list[Message]:  # the link drops after 4 chunks
        if isinstance(message, FirmwareChunk):
            sent.append(message.index)
            return [message] if len(sent) <= 4 else []
        return [message]

    hub.tamper = cut
    device.connect()
    component = device.component
    assert component is not None and component.step is Step.DOWNLOADING
    hub.tamper = None
    before = len(hub.requests)
    device.connect()  # reconnect: query, reports again, resume
    resumed = hub.requests[before]
    assert resumed.index == 4  # the verified prefix is not asked for again
    assert component.step is Step.CONFIRMED and component.running_image() == NEW


def test_resume_after_an_agent_restart_from_the_persisted_offer(device, hub):
    job = make_job(1)
    hub.jobs.append(job)
    hub.tamper = lambda m: [m] if not isinstance(m, FirmwareChunk) or m.index < 5 else []
    device.connect()
    device.tick(1)
    assert device.component is not None
    assert device.component.installer.state.written == 5 * CHUNK
    device.power_on()  # the agent restarts: a new component from the directory
    hub.tamper = None
    before = len(hub.requests)
    device.connect()
    assert hub.queries[-1] == FirmwareQuery(installed_seq=1, job_id=job.job_id)
    assert hub.requests[before].index == 5
    assert hub.steps(job.job_id) == HAPPY
    assert device.component.running_image() == NEW


def test_timeouts_ask_again_then_give_up(device, hub):
    job = make_job(1)
    hub.jobs.append(job)
    hub.drop_requests = True
    device.connect()
    component = device.component
    assert component is not None
    timeout, stalls = component.settings.chunk_timeout_seconds, component.settings.max_stalls
    first = list(hub.requests)
    device.tick(timeout - 1)
    assert hub.requests == first  # not yet
    device.tick(1)
    assert hub.requests[len(first) :] == first  # the same window asked again
    for _ in range(stalls):
        device.tick(timeout)
    assert component.step is Step.FAILED
    assert "download stalled" in (hub.reports[-1].reason or "")
    assert component.running_image() == FACTORY


def test_the_whole_download_has_a_deadline(tmp_path):
    hub = FakeHub(drop_requests=True)
    dev = Device(tmp_path, hub, settings=settings(download_timeout_seconds=25, max_stalls=100))
    dev.provision()
    dev.power_on()
    hub.jobs.append(make_job(1))
    dev.connect()
    for _ in range(3):
        dev.tick(10)
    assert dev.component is not None and dev.component.step is Step.FAILED
    assert "timed out" in (hub.reports[-1].reason or "")


@pytest.mark.parametrize(
    ("verdict", "reason"),
    [("fail", "health check failed"), ("silent", "no confirmation within 3 boot attempts")],
)
def test_a_failed_health_check_reverts_to_the_old_image(tmp_path, verdict, reason):
    hub = FakeHub()
    dev = Device(tmp_path, hub, settings=settings(health_check=verdict))
    dev.provision()
    dev.power_on()
    job = make_job(1)
    hub.jobs.append(job)
    dev.connect()
    component = dev.component
    assert component is not None
    assert hub.steps(job.job_id) == [*HAPPY[:5], "reverted"]
    assert hub.reports[-1].reason == reason and hub.reports[-1].installed_seq == 1
    assert component.active_slot == "a" == component.running_slot
    assert component.running_image() == FACTORY
    assert component.installed_seq == 1 and RollbackStore(dev.root).installed == 1


def test_a_health_hook_sees_the_new_image(tmp_path):
    probes = []
    hub = FakeHub()
    dev = Device(tmp_path, hub, health=lambda probe: probes.append(probe) or True)
    dev.provision()
    dev.power_on()
    job = make_job(1)
    hub.jobs.append(job)
    dev.connect()
    assert [(p.job_id, p.sequence, p.digest, p.slot) for p in probes] == [
        (job.job_id, 2, sha(NEW), "b")
    ]


def test_a_cancel_during_the_download_abandons_the_job(device, hub):
    job = make_job(1)
    hub.jobs.append(job)
    hub.tamper = lambda m: [m] if not isinstance(m, FirmwareChunk) or m.index < 3 else []
    device.connect()
    component = device.component
    assert component is not None
    answer = component.on_message(FirmwareCancel(job.job_id, "rollout_aborted"), now=device.now)
    device.exchange(answer or [])
    assert component.step is Step.FAILED
    assert hub.steps(job.job_id) == ["downloading", "failed"]
    assert hub.reports[-1].reason == "cancelled: rollout_aborted"
    assert component.running_image() == FACTORY
    # chunks arriving afterwards are refused, nothing more is written
    late = FirmwareChunk(job.job_id, 3, job.chunk(3))
    assert component.on_message(late, now=device.now) == []
    assert component.refused_chunks["foreign_job"] == 1


def test_a_cancel_after_confirmation_or_of_another_job_changes_nothing(device, hub):
    job = make_job(1)
    hub.jobs.append(job)
    device.connect()
    component = device.component
    assert component is not None
    for cancel in (FirmwareCancel(job.job_id, "late"), FirmwareCancel("job-" + "e" * 24, "x")):
        assert component.on_message(cancel, now=device.now) == []
    assert component.step is Step.CONFIRMED and hub.steps(job.job_id) == HAPPY


def test_unacknowledged_reports_are_resent_with_the_same_keys(device, hub):
    hub.ack_reports = False
    job = make_job(1)
    hub.jobs.append(job)
    device.connect()
    component = device.component
    assert component is not None
    first = [r.key for r in hub.reports]
    assert len(first) == 6 and len(component.installer.state.outbox) == 6
    device.tick(1)
    assert len(hub.reports) == 6  # not yet due
    device.tick(component.settings.report_retry_seconds)
    assert [r.key for r in hub.reports[6:]] == first
    device.power_on()  # a restart keeps them: they are persisted
    hub.ack_reports = True
    device.connect()
    assert [r.key for r in hub.reports[12:]] == first
    assert device.component is not None and device.component.installer.state.outbox == ()
    count = len(hub.reports)
    device.connect()
    device.tick(1000)
    assert len(hub.reports) == count  # acknowledged reports are never sent again


def test_an_ack_for_unknown_keys_is_harmless(device):
    component = device.component
    assert component is not None
    assert component.on_message(FirmwareReportAck(keys=("nope",)), now=1) == []


def test_the_same_offer_again_mid_download_does_not_restart(device, hub):
    job = make_job(1)
    hub.jobs.append(job)
    hub.tamper = lambda m: [m] if not isinstance(m, FirmwareChunk) or m.index < 2 else []
    device.connect()
    component = device.component
    assert component is not None
    device.offer(job)
    device.tick(1)
    assert component.installer.state.written == 2 * CHUNK
    assert [r.step for r in hub.reports] == ["downloading"]


def test_a_new_offer_supersedes_an_unfinished_download(device, hub):
    first, second = make_job(1), make_job(2, sequence=3)
    hub.jobs.append(first)
    hub.tamper = lambda m: [m] if not isinstance(m, FirmwareChunk) or m.index < 2 else []
    device.connect()
    hub.tamper = None
    hub.jobs.append(second)
    device.offer(second)
    assert hub.steps(first.job_id) == ["downloading", "failed"]
    assert hub.reports[1].reason == f"superseded by {second.job_id}"
    assert hub.steps(second.job_id) == HAPPY
    assert device.component is not None and device.component.installed_seq == 3


def test_a_confirmed_job_offered_again_is_not_reinstalled(device, hub):
    job = make_job(1)
    hub.jobs.append(job)
    device.connect()
    count = len(hub.requests)
    device.offer(job)
    assert len(hub.requests) == count and hub.steps(job.job_id) == HAPPY


def test_a_second_install_uses_the_other_slot_and_the_first_is_then_a_rollback(device, hub):
    hub.jobs.append(make_job(1))
    device.connect()
    third = make_job(2, image=NEW[::-1], sequence=3)
    hub.jobs.append(third)
    device.connect()
    component = device.component
    assert component is not None
    assert component.active_slot == "a" and component.running_image() == NEW[::-1]
    replay = make_job(3, sequence=2)
    hub.jobs.append(replay)
    device.connect()
    assert hub.steps(replay.job_id) == ["failed"]
    assert (hub.reports[-1].reason or "").startswith("suit_rollback")


def test_a_download_without_its_stored_offer_fails_cleanly(device, hub):
    job = make_job(1)
    hub.jobs.append(job)
    hub.tamper = lambda m: [m] if not isinstance(m, FirmwareChunk) or m.index < 2 else []
    device.connect()
    OfferFile(device.root).path.unlink()
    component = device.power_on()
    assert component.step is Step.FAILED
    assert "cannot resume" in (component.installer.state.outbox[-1].reason or "")
    assert component.running_image() == FACTORY


def test_resume_refuses_an_offer_whose_anchor_was_removed(device, hub):
    job = make_job(1)
    hub.jobs.append(job)
    hub.tamper = lambda m: [m] if not isinstance(m, FirmwareChunk) or m.index < 2 else []
    device.connect()
    device.keys = []
    component = device.power_on()
    assert component.step is Step.FAILED


def test_foreign_messages_are_not_taken(device):
    from protocols.messages import Status

    assert device.component is not None
    assert device.component.on_message(Status(online=True), now=1) is None


def test_settings_ids_are_the_device_class(device):
    assert device.component is not None
    assert device.component.settings.vendor_id == VENDOR
    assert device.component.settings.class_id == CLASS
    assert device.component.device_id == DEV


def test_job_helper_chunks_cover_the_image():
    job = Job("job-" + "0" * 24, NEW, b"e")
    assert b"".join(job.chunk(i) for i in range(CHUNKS)) == NEW


def test_a_refused_chunk_request_makes_the_device_ask_the_hub_for_its_job(device, hub):
    job = make_job(1)
    hub.jobs.append(job)
    hub.tamper = lambda m: [m] if not isinstance(m, FirmwareChunk) or m.index < 3 else []
    device.connect()
    component = device.component
    assert component is not None
    up = f"d/{DEV}/up/firmware"
    refusal = ErrorReply(code="job_not_active", message="cancelled", ref=up)
    [query] = component.on_message(refusal, now=device.now) or []
    sent = decode_as(FirmwareQuery, query.payload)
    # It names the job it works on, so the hub can answer with a cancel.
    assert sent == FirmwareQuery(installed_seq=1, job_id=job.job_id)
    assert component.step is Step.DOWNLOADING  # nothing abandoned on a topic-only refusal
    # Spaced out: a burst of refusals costs one query.
    assert component.on_message(refusal, now=device.now + 1) == []
    # Other topics' refusals are not the component's; other codes change nothing.
    foreign = ErrorReply(code="job_not_active", message="x", ref=f"d/{DEV}/up/usage")
    assert component.on_message(foreign, now=device.now + 10) is None
    odd = ErrorReply(code="chunk_out_of_range", message="x", ref=up)
    assert component.on_message(odd, now=device.now + 10) == []
