"""The firmware invariants on hand-made runs: each injected fault is reported, a clean run is not.

Device A is entitled to the gated package and confirmed it; device B's group
is not entitled, so it runs its original image and was never offered the
package. Each test breaks one thing and expects exactly its violation.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from protocols import suit
from protocols.cose import CoseKey
from protocols.firmware_messages import FirmwareOffer
from protocols.messages import encode_message
from simulator.checker import CheckResult, HubDevice, HubState, RunFacts, check
from simulator.fwcheck import HubJob, HubRollout, IssuedImage, threshold_crossed
from simulator.hubstate import history
from simulator.recorder import DeviceRecord, FirmwareScope, Recorder

NEW = "aa" * 32
ORIGINAL_A, ORIGINAL_B = "0a" * 32, "0b" * 32
NOW = 10_000.0
FACTS = RunFacts(lease_seconds=120, firmware_available=True, rollout_started=True)


def records() -> dict[str, DeviceRecord]:
    a = DeviceRecord(serial="A", group="care", device_id="dev-a", manifest_seq=3)
    a.firmware_original, a.firmware_running = ORIGINAL_A, NEW
    a.firmware_offers = {"job-a": 9_000.0}
    b = DeviceRecord(serial="B", group="legacy", device_id="dev-b", manifest_seq=3)
    b.firmware_entitled = False
    b.firmware_original = b.firmware_running = ORIGINAL_B
    return {"A": a, "B": b}


def rollout(state: str = "completed", *jobs: HubJob, **changes: object) -> HubRollout:
    confirmed = HubJob("job-a", "dev-a", "confirmed", offered_at=9_000.0)
    base = HubRollout("r1", "pkg", state, jobs=jobs or (confirmed,))
    return replace(base, **changes)  # type: ignore[arg-type]


def hub(*rollouts: HubRollout, images: list[IssuedImage] | None = None) -> HubState:
    return HubState(
        devices={
            "dev-a": HubDevice("dev-a", "A", "claimed", 3),
            "dev-b": HubDevice("dev-b", "B", "claimed", 3),
        },
        rollouts=list(rollouts) if rollouts else [rollout()],
        images=images if images is not None else [IssuedImage("pkg", 1, NEW, True, True)],
        fetched_at=NOW,
    )


def kinds(result: CheckResult) -> list[str]:
    return sorted(v.kind for v in result.violations)


def test_a_clean_rollout_passes_with_its_figures() -> None:
    result = check(records(), hub(), FACTS)
    assert result.ok, result.violations
    assert not [s for s in result.skipped if "firmware" in s or "rollout" in s]
    fw = result.firmware.to_json()
    assert (fw["offered"], fw["confirmed"], fw["unentitled_offered"]) == (1, 1, 0)
    assert (fw["devices_on_new_image"], fw["devices_on_original_image"]) == (1, 1)
    assert fw["rollouts"] == [
        {"id": "r1", "state": "completed", "reason": "", "jobs": {"confirmed": 1}}
    ]


def test_an_unentitled_install_is_reported() -> None:
    devices = records()
    devices["B"].firmware_running = NEW
    result = check(devices, hub(), FACTS)
    assert kinds(result) == ["firmware_unentitled"]
    assert result.violations[0].device == "dev-b"


def test_an_unverified_image_is_reported() -> None:
    devices = records()
    devices["B"].firmware_running = "ff" * 32  # neither its original nor signed by the hub
    assert kinds(check(devices, hub(), FACTS)) == ["firmware_unverified"]
    # an image whose envelope did not verify under the hub's anchor is no better; the hub
    # still counts device A confirmed on the package, whose image it does not run
    unverified = [IssuedImage("pkg", 1, "", verified=False, gated=False)]
    result = check(records(), hub(images=unverified), FACTS)
    assert kinds(result) == ["firmware_unverified"]
    assert result.violations[0].device == "dev-a"


def test_an_offer_to_an_unentitled_device_is_reported_from_either_side() -> None:
    devices = records()
    devices["B"].firmware_offers = {"job-b": 9_100.0}
    job_b = HubJob("job-b", "dev-b", "cancelled")  # the hub withdrew it, but it went out
    confirmed = HubJob("job-a", "dev-a", "confirmed", offered_at=9_000.0)
    result = check(devices, hub(rollout("completed", confirmed, job_b)), FACTS)
    assert kinds(result) == ["firmware_unentitled_offer"]
    assert result.firmware.unentitled_offered == 1
    hub_side = HubJob("job-b", "dev-b", "failed", offered_at=9_100.0)
    result = check(records(), hub(rollout("completed", confirmed, hub_side)), FACTS)
    assert kinds(result) == ["firmware_unentitled_offer"]


def test_a_rollout_stuck_with_active_jobs_is_reported() -> None:
    late = HubJob("job-a", "dev-a", "downloading", offered_at=9_000.0, deadline_at=NOW - 1)
    devices = records()
    devices["A"].firmware_running = ORIGINAL_A
    paused = {"stopped_by": "key:operator", "stopped_at": 9_500.0}  # an operator paused it
    stuck = check(devices, hub(rollout("paused", late, **paused)), FACTS)
    assert kinds(stuck) == ["rollout_stuck"]
    in_time = replace(late, deadline_at=NOW + 60)
    assert check(devices, hub(rollout("paused", in_time, **paused)), FACTS).ok
    # a completed rollout has no unfinished job, deadline or not
    result = check(devices, hub(rollout("completed", in_time)), FACTS)
    assert kinds(result) == ["rollout_stuck"]
    assert kinds(check(devices, hub(rollout("running", in_time)), FACTS)) == ["rollout_unsettled"]


def test_job_states_must_agree_with_what_devices_run() -> None:
    devices = records()
    devices["A"].firmware_running = ORIGINAL_A  # the hub says confirmed
    assert kinds(check(devices, hub(), FACTS)) == ["rollout_disagrees"]
    reverted = HubJob("job-a", "dev-a", "reverted", offered_at=9_000.0)
    assert kinds(check(records(), hub(rollout("completed", reverted)), FACTS)) == [
        "rollout_disagrees"
    ]
    devices["A"].firmware_running = ORIGINAL_A
    assert check(devices, hub(rollout("completed", reverted)), FACTS).ok


def test_a_crossed_threshold_must_stop_the_rollout_and_its_offers() -> None:
    failing = tuple(
        HubJob(f"job-{n}", f"dev-x{n}", "reverted", offered_at=9_000.0 + n) for n in range(3)
    )
    jobs = (HubJob("job-a", "dev-a", "confirmed", offered_at=9_000.0), *failing)
    crossed = rollout("completed", *jobs, failure_percent=50, failure_min_sample=4)
    assert threshold_crossed(crossed)
    assert kinds(check(records(), hub(crossed), FACTS)) == ["rollout_threshold_ignored"]
    aborted = replace(crossed, state="aborted", stopped_at=9_001.5)
    result = check(records(), hub(aborted), FACTS)
    assert kinds(result) == ["rollout_offered_after_stop"]  # job-2 went out after the abort
    assert "job-2" in result.violations[0].detail
    assert check(records(), hub(replace(aborted, stopped_at=9_010.0)), FACTS).ok
    below = replace(crossed, failure_min_sample=5)
    assert not threshold_crossed(below)
    assert check(records(), hub(below), FACTS).ok


def test_a_rollout_that_could_not_start_is_a_violation_and_none_planned_is_skipped() -> None:
    failed = replace(FACTS, rollout_started=False, rollout_error="POST /firmware/packages: 422")
    assert kinds(check(records(), hub(), failed)) == ["rollout_not_started"]
    devices = records()
    devices["A"].firmware_running = ORIGINAL_A
    no_rollout = replace(failed, rollout_error="")
    quiet = check(devices, HubState(hub().devices, rollouts=[]), no_rollout)
    assert quiet.ok
    assert any("started no rollout" in s for s in quiet.skipped)


def test_the_recorder_notes_every_offer_a_device_receives() -> None:
    recorder = Recorder()
    record = recorder.add("A", "care", 0, ())
    record.device_id = "dev-a"
    offer = FirmwareOffer(job_id="job-" + "0" * 24, envelope=b"\xd8\x6b", chunk_size=1024)
    recorder.received(record, "d/dev-a/down/firmware", encode_message(offer))
    recorder.received(record, "d/dev-a/down/firmware", encode_message(offer))
    assert list(record.firmware_offers) == ["job-" + "0" * 24]
    assert record.foreign_received == []


def sign_envelope(image: bytes) -> tuple[bytes, FirmwareScope]:
    private = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    raw = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    vendor, cls = "fa6b4a53-d5ad-5fdf-be9d-e663e4d41ffe", "1492af14-2569-5e48-bf42-9b2d51f2ab45"
    envelope = suit.build_envelope(
        sequence=7,
        vendor_id=vendor,
        class_id=cls,
        image=image,
        uri="https://hub.example/fw/7",
        chunk_size=1024,
        kid=b"fw-1",
        sign=private.sign,
    )
    return envelope, FirmwareScope("class", vendor, cls, [CoseKey.ed25519(b"fw-1", raw)])


def test_the_recorder_keeps_the_image_each_verified_offer_names() -> None:
    image = b"gated firmware image"
    envelope, scope = sign_envelope(image)
    recorder = Recorder()
    record = recorder.add("B", "legacy", 0, ())
    record.device_id = "dev-b"
    recorder.firmware_scope = scope
    offer = FirmwareOffer(job_id="job-" + "1" * 24, envelope=envelope, chunk_size=1024)
    recorder.received(record, "d/dev-b/down/firmware", encode_message(offer))
    assert record.firmware_offer_images == {offer.job_id: hashlib.sha256(image).hexdigest()}
    # an envelope that does not verify under the hub's anchor names nothing
    forged, _ = sign_envelope(b"x")
    other = replace(scope, keys=[CoseKey.ed25519(b"fw-1", b"\x01" * 32)])
    recorder.firmware_scope = other
    second = FirmwareOffer(job_id="job-" + "2" * 24, envelope=forged, chunk_size=1024)
    recorder.received(record, "d/dev-b/down/firmware", encode_message(second))
    assert record.firmware_offer_images[second.job_id] == ""


def test_an_offer_of_a_gated_image_is_reported_whatever_its_job() -> None:
    devices = records()
    # the job was replaced since (not among the current ones), but the image is the gated one
    devices["B"].firmware_offers = {"job-old": 9_100.0}
    devices["B"].firmware_offer_images = {"job-old": NEW}
    result = check(devices, hub(), FACTS)
    assert kinds(result) == ["firmware_unentitled_offer"]
    assert "job-old" in result.violations[0].detail
    devices["B"].firmware_offer_images = {"job-old": ORIGINAL_B}  # not a gated image
    assert check(devices, hub(), FACTS).ok


def test_a_retired_gated_job_offered_to_an_unentitled_device_is_reported() -> None:
    devices = records()
    devices["B"].firmware_offers = {"job-b1": 9_100.0}  # the image is unknown to the recorder
    retired = HubJob("job-b1", "dev-b", "failed", offered_at=9_100.0)
    current = HubJob("job-b2", "dev-b", "cancelled")
    confirmed = HubJob("job-a", "dev-a", "confirmed", offered_at=9_000.0)
    replaced = rollout("completed", confirmed, current, retired=(retired,))
    result = check(devices, hub(replaced), FACTS)
    assert kinds(result) == ["firmware_unentitled_offer"]
    assert "job-b1" in result.violations[0].detail
    # the hub's side alone: a retired job it offered
    assert kinds(check(records(), hub(replaced), FACTS)) == ["firmware_unentitled_offer"]


def test_a_gated_job_left_pending_for_an_unentitled_device_is_reported() -> None:
    confirmed = HubJob("job-a", "dev-a", "confirmed", offered_at=9_000.0)
    pending = HubJob("job-b", "dev-b", "pending")
    result = check(records(), hub(rollout("completed", confirmed, pending)), FACTS)
    assert kinds(result) == ["firmware_unentitled_target", "rollout_stuck"]
    ungated = [IssuedImage("pkg", 1, NEW, True, gated=False)]
    assert kinds(
        check(records(), hub(rollout("running", confirmed, pending), images=ungated), FACTS)
    ) == ["rollout_unsettled"]


def test_an_unreadable_running_image_is_a_violation() -> None:
    devices = records()
    devices["A"].firmware_running = ""
    devices["A"].firmware_unreadable = "cannot read its running image: OSError('slot b')"
    result = check(devices, hub(), FACTS)
    assert kinds(result) == ["firmware_unreadable"]
    assert "slot b" in result.violations[0].detail
    devices["A"].firmware_unreadable = ""  # nothing recorded at all is no better
    assert kinds(check(devices, hub(), FACTS)) == ["firmware_unreadable"]


def test_a_planned_rollout_that_never_started_is_a_violation() -> None:
    devices = records()
    devices["A"].firmware_running = ORIGINAL_A
    planned = replace(FACTS, rollout_planned=True, rollout_started=False)
    result = check(devices, HubState(hub().devices, rollouts=[]), planned)
    assert kinds(result) == ["rollout_not_started"]
    assert check(
        devices, HubState(hub().devices, rollouts=[]), replace(planned, rollout_planned=False)
    ).ok


def test_offers_after_a_cancel_or_a_pause_count_from_the_audited_stop() -> None:
    jobs = (
        HubJob("job-a", "dev-a", "confirmed", offered_at=9_000.0),
        HubJob("job-x", "dev-x", "cancelled", offered_at=9_300.0),
    )
    cancelled = rollout("cancelled", *jobs, stopped_at=9_200.0, stopped_by="key:op")
    assert kinds(check(records(), hub(cancelled), FACTS)) == ["rollout_offered_after_stop"]
    paused = replace(cancelled, state="paused")
    assert kinds(check(records(), hub(paused), FACTS)) == ["rollout_offered_after_stop"]
    # paused, resumed (offering again), paused later: the audit trail's last pause counts
    assert check(records(), hub(replace(paused, stopped_at=9_400.0)), FACTS).ok


def test_the_audit_trail_gives_the_stop_and_the_last_operator_rebase() -> None:
    events = [
        {
            "id": 1,
            "at": "2026-01-01T00:00:10Z",
            "action": "firmware.rollout.paused",
            "actor": "system",
        },
        {
            "id": 2,
            "at": "2026-01-01T00:00:20Z",
            "action": "firmware.rollout.resume",
            "actor": "key:op",
        },
        {
            "id": 4,
            "at": "2026-01-01T00:00:40Z",
            "action": "firmware.rollout.paused",
            "actor": "key:op",
        },
        {
            "id": 3,
            "at": "2026-01-01T00:00:30Z",
            "action": "firmware.rollout.retry",
            "actor": "key:op",
        },
    ]
    found = history("paused", events)
    assert found.stopped_by == "key:op"
    assert found.stopped_at is not None and found.rebased_at is not None
    assert found.stopped_at - found.rebased_at == 10.0
    assert history("running", events).stopped_at is None


def failing_rollout(state: str, **changes: object) -> HubRollout:
    failed = tuple(
        HubJob(f"job-f{n}", f"dev-f{n}", "failed", offered_at=9_000.0, finished_at=9_100.0 + n)
        for n in range(3)
    )
    good = HubJob("job-a", "dev-a", "confirmed", offered_at=9_000.0, finished_at=9_050.0)
    return rollout(state, good, *failed, failure_percent=50, failure_min_sample=4, **changes)


def test_failures_an_operator_already_judged_do_not_count() -> None:
    crossed = failing_rollout("running")
    assert threshold_crossed(crossed)
    assert kinds(check(records(), hub(crossed), FACTS)) == [
        "rollout_threshold_ignored",
        "rollout_unsettled",
    ]
    resumed = replace(crossed, rebased_at=9_150.0)  # the operator resumed after all four
    assert not threshold_crossed(resumed)
    assert kinds(check(records(), hub(replace(resumed, state="completed")), FACTS)) == []


def test_a_stop_by_the_hub_must_be_explained_by_its_own_rules() -> None:
    by_hub = {"stopped_by": "system", "stopped_at": 9_200.0}
    assert check(records(), hub(failing_rollout("aborted", **by_hub)), FACTS).ok
    # the threshold was crossed only after the stop: the stop itself is unexplained
    early = failing_rollout("aborted", stopped_by="system", stopped_at=9_101.0)
    assert kinds(check(records(), hub(early), FACTS)) == ["rollout_stop_unexplained"]
    healthy = rollout("paused", stopped_by="system", stopped_at=9_200.0, wave_count=2)
    assert kinds(check(records(), hub(healthy), FACTS)) == ["rollout_stop_unexplained"]
    # a first wave below its success criterion explains a pause (not an abort)
    missed = replace(
        healthy,
        success_percent=100,
        jobs=(
            HubJob("job-a", "dev-a", "confirmed", offered_at=9_000.0),
            HubJob("job-y", "dev-y", "timed_out", offered_at=9_000.0),
        ),
    )
    assert check(records(), hub(missed), FACTS).ok
    assert kinds(check(records(), hub(replace(missed, state="aborted")), FACTS)) == [
        "rollout_stop_unexplained"
    ]
    # an operator's pause explains itself
    assert check(records(), hub(replace(healthy, stopped_by="key:op")), FACTS).ok
