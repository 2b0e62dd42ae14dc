"""Firmware invariants: what each device runs against what the hub issued and its rollouts.

Pure: :func:`check_firmware` takes the devices' ground truth (the image each
one runs at the end, the image it was built with, the offers it received,
whether its group was entitled to the gated package) and the hub's account
(the packages whose signed envelopes the simulator verified, the rollouts
and their jobs) and returns figures and findings:

- ``firmware_unverified``: a device runs an image that is neither its
  original one nor named by an envelope the hub signed (verified against the
  hub's firmware trust anchor); ``firmware_unreadable``: a device with a
  firmware component whose running image could not be read at the end;
- ``firmware_unentitled``: a device runs a gated image its group was never
  entitled to; ``firmware_unentitled_offer``: such a device was offered (or
  the hub counts it offered) a gated package at all, by job (current or
  retired) or by the image its offer's verified envelope names;
  ``firmware_unentitled_target``: the hub holds a job of a gated package for
  such a device that was never offered (targeted, left pending);
- ``rollout_unsettled``: a rollout not in a final state once the fleet settled;
  ``rollout_stuck``: a job still active past its deadline, or a completed
  rollout with unfinished jobs;
- ``rollout_disagrees``: the hub counts a device ``confirmed`` that does not
  run the package's image, or ``reverted``/``failed`` one that does;
- ``rollout_threshold_ignored``: the failures since the last operator
  resume or retry crossed the rollout's threshold yet it is completed or
  running; ``rollout_offered_after_stop``: a device was offered a job after
  the rollout was aborted, cancelled or paused (the stop time comes from the
  audit trail); ``rollout_stop_unexplained``: the hub itself aborted or paused
  a rollout that neither its failure threshold (at the stop) nor a wave below
  its success criterion explains.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from simulator.recorder import DeviceRecord

FINAL_ROLLOUT_STATES = frozenset({"draft", "completed", "aborted", "cancelled", "paused"})
"""A rollout still ``running`` once faults stopped and the fleet settled is not final."""

ACTIVE_JOB_STATES = frozenset(
    {"offered", "downloading", "downloaded", "verified", "installing", "rebooting"}
)
FAILED_JOB_STATES = frozenset({"failed", "reverted", "timed_out"})
STOPPED_ROLLOUT_STATES = frozenset({"aborted", "paused", "cancelled"})
SYSTEM_ACTOR = "system"
"""The audit actor of the hub's own rollout decisions (threshold, success criterion)."""

Finding = tuple[str, str | None, str]
"""``(kind, device or rollout id, detail)``: a violation, before the checker wraps it."""


@dataclass(frozen=True, slots=True)
class IssuedImage:
    """A firmware package of the run's device class, as the hub issued it.

    Attributes:
        package_id: The hub's package id.
        sequence: Its SUIT sequence number.
        digest: Hex SHA-256 of the image, as the signed envelope names it
            (empty when the envelope did not verify).
        verified: The envelope verified under the hub's firmware trust anchor.
        gated: Only devices entitled to the gate's product may have it.
    """

    package_id: str
    sequence: int
    digest: str
    verified: bool
    gated: bool


@dataclass(frozen=True, slots=True)
class HubJob:
    """One device's job in a rollout (times as Unix seconds, ``None`` when unset)."""

    job_id: str
    device_id: str
    state: str
    offered_at: float | None = None
    deadline_at: float | None = None
    finished_at: float | None = None
    wave: int = 0


@dataclass(frozen=True, slots=True)
class HubRollout:
    """A rollout as the hub reports it at the end, with its jobs.

    Attributes:
        stopped_at: When it entered its current stopped state (aborted,
            cancelled, paused), from the audit trail: no job may have been
            offered after it. ``None`` when unknown.
        stopped_by: The audit actor of that stop (``""`` unknown).
        rebased_at: The last operator resume or retry (the hub restarts its
            failure threshold there): only jobs finished later count.
        success_percent: The per-wave success criterion.
        wave_count: How many waves the rollout has.
        jobs: The current attempt of every targeted device.
        retired: Earlier attempts an operator retry replaced.
    """

    rollout_id: str
    package_id: str
    state: str
    reason: str = ""
    failure_percent: int = 10
    failure_min_sample: int = 5
    stopped_at: float | None = None
    jobs: tuple[HubJob, ...] = ()
    retired: tuple[HubJob, ...] = ()
    stopped_by: str = ""
    rebased_at: float | None = None
    success_percent: int = 0
    wave_count: int = 1


@dataclass
class FirmwareFigures:
    """Firmware counted over the fleet and the hub's rollouts."""

    offered: int = 0
    confirmed: int = 0
    reverted: int = 0
    failed: int = 0
    timed_out: int = 0
    unentitled_offered: int = 0
    running_new: int = 0
    running_original: int = 0
    rollouts: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The report's ``firmware`` object."""
        return {
            "offered": self.offered,
            "confirmed": self.confirmed,
            "reverted": self.reverted,
            "failed": self.failed,
            "timed_out": self.timed_out,
            "unentitled_offered": self.unentitled_offered,
            "devices_on_new_image": self.running_new,
            "devices_on_original_image": self.running_original,
            "rollouts": self.rollouts,
        }


def check_firmware(
    records: Iterable[DeviceRecord],
    rollouts: list[HubRollout],
    images: list[IssuedImage],
    *,
    now: float,
) -> tuple[FirmwareFigures, list[Finding]]:
    """Every firmware invariant; ``now`` is when the hub's account was fetched."""
    by_device = {r.device_id: r for r in records if r.device_id}
    figures, findings = FirmwareFigures(), list[Finding]()
    _installed(by_device.values(), images, figures, findings)
    _unentitled_offers(by_device, rollouts, images, figures, findings)
    packages = {image.package_id: image for image in images}
    for rollout in rollouts:
        _count(rollout, figures)
        image = packages.get(rollout.package_id)
        findings.extend(_rollout_state(rollout, now))
        findings.extend(_agreement(rollout, image, by_device))
        findings.extend(_threshold(rollout))
    return figures, findings


def _installed(
    records: Iterable[DeviceRecord],
    images: list[IssuedImage],
    figures: FirmwareFigures,
    findings: list[Finding],
) -> None:
    issued = {i.digest: i for i in images if i.verified and i.digest}
    for record in records:
        running = record.firmware_running
        if record.firmware_unreadable or (record.firmware_original and not running):
            # A device with a firmware component that cannot say what it runs
            # proves nothing: it may run anything.
            why = record.firmware_unreadable or "no running image was recorded"
            findings.append(("firmware_unreadable", record.device_id, why))
            continue
        if not running:
            continue  # no firmware component on this device
        if running == record.firmware_original:
            figures.running_original += 1
            continue
        image = issued.get(running)
        if image is None:
            findings.append(
                (
                    "firmware_unverified",
                    record.device_id,
                    f"runs image {running[:16]}…, named by no envelope the hub signed",
                )
            )
        elif image.gated and not record.firmware_entitled:
            findings.append(
                (
                    "firmware_unentitled",
                    record.device_id,
                    f"runs package {image.package_id} (sequence {image.sequence})"
                    f" without the entitlement it requires (group {record.group})",
                )
            )
        else:
            figures.running_new += 1


def _unentitled_offers(
    by_device: Mapping[str, DeviceRecord],
    rollouts: list[HubRollout],
    images: list[IssuedImage],
    figures: FirmwareFigures,
    findings: list[Finding],
) -> None:
    """Gated packages offered or targeted to devices never entitled to them: from both sides.

    A device-side offer counts by its job id (current or retired: an operator
    retry replaces jobs) and, whatever its job id, by the image its verified
    envelope names.
    """
    gated = {i.package_id for i in images if i.gated}
    gated_digests = {i.digest for i in images if i.gated and i.verified and i.digest}
    gated_jobs = [j for r in rollouts if r.package_id in gated for j in (*r.jobs, *r.retired)]
    gated_ids = {j.job_id for j in gated_jobs}
    for device_id, record in by_device.items():
        if record.firmware_entitled:
            continue
        seen = {job for job in record.firmware_offers if job in gated_ids}
        seen |= {job for job, d in record.firmware_offer_images.items() if d in gated_digests}
        own = [j for j in gated_jobs if j.device_id == device_id]
        seen |= {j.job_id for j in own if j.offered_at is not None}
        if seen:
            figures.unentitled_offered += len(seen)
            findings.append(
                (
                    "firmware_unentitled_offer",
                    device_id,
                    f"offered {len(seen)} gated job(s) it is not entitled to:"
                    f" {', '.join(sorted(seen)[:3])}",
                )
            )
        elif own:
            findings.append(
                (
                    "firmware_unentitled_target",
                    device_id,
                    f"the hub targets it with {len(own)} gated job(s) it is not entitled to,"
                    f" e.g. {own[0].job_id} ({own[0].state})",
                )
            )


def _count(rollout: HubRollout, figures: FirmwareFigures) -> None:
    states = Counter(j.state for j in rollout.jobs)
    figures.offered += sum(1 for j in rollout.jobs if j.offered_at is not None)
    figures.confirmed += states["confirmed"]
    figures.reverted += states["reverted"]
    figures.failed += states["failed"]
    figures.timed_out += states["timed_out"]
    figures.rollouts.append(
        {
            "id": rollout.rollout_id,
            "state": rollout.state,
            "reason": rollout.reason,
            "jobs": dict(sorted(states.items())),
        }
    )


def _rollout_state(rollout: HubRollout, now: float) -> list[Finding]:
    found: list[Finding] = []
    if rollout.state not in FINAL_ROLLOUT_STATES:
        found.append(
            ("rollout_unsettled", rollout.rollout_id, f"rollout ended in state {rollout.state!r}")
        )
    overdue = [
        j
        for j in rollout.jobs
        if j.state in ACTIVE_JOB_STATES and j.deadline_at is not None and j.deadline_at < now
    ]
    if overdue:
        found.append(
            (
                "rollout_stuck",
                rollout.rollout_id,
                f"{len(overdue)} job(s) still active past their deadline, e.g."
                f" {overdue[0].job_id} ({overdue[0].state})",
            )
        )
    if rollout.state == "completed":
        open_jobs = [j for j in rollout.jobs if j.state in ACTIVE_JOB_STATES | {"pending"}]
        if open_jobs:
            found.append(
                (
                    "rollout_stuck",
                    rollout.rollout_id,
                    f"completed with {len(open_jobs)} unfinished job(s),"
                    f" e.g. {open_jobs[0].job_id} ({open_jobs[0].state})",
                )
            )
    return found


def _agreement(
    rollout: HubRollout, image: IssuedImage | None, by_device: Mapping[str, DeviceRecord]
) -> list[Finding]:
    """The hub's job outcomes against what each device says it runs."""
    if image is None or not image.digest:
        return []
    found: list[Finding] = []
    for job in rollout.jobs:
        record = by_device.get(job.device_id)
        if record is None or not record.firmware_running:
            continue
        runs_it = record.firmware_running == image.digest
        if job.state == "confirmed" and not runs_it:
            found.append(
                (
                    "rollout_disagrees",
                    job.device_id,
                    f"the hub counts job {job.job_id} confirmed; the device runs another image",
                )
            )
        elif job.state in ("reverted", "failed") and runs_it:
            found.append(
                (
                    "rollout_disagrees",
                    job.device_id,
                    f"the hub counts job {job.job_id} {job.state};"
                    " the device runs the package's image",
                )
            )
    return found


def threshold_crossed(rollout: HubRollout, at: float | None = None) -> bool:
    """The rollout's failure rule (docs/firmware.md §6) over its current jobs.

    Like the hub, it counts only jobs finished after the last operator resume
    or retry (``rebased_at``; the hub's ``base_failures``/``base_finished``
    are these jobs), and with ``at`` only jobs finished by then.
    """
    failures = finished = 0
    for job in rollout.jobs:
        if job.state not in FAILED_JOB_STATES and job.state != "confirmed":
            continue
        done = job.finished_at
        if done is not None and rollout.rebased_at is not None and done <= rollout.rebased_at:
            continue  # judged by the operator already
        if done is not None and at is not None and done > at:
            continue
        finished += 1
        failures += job.state in FAILED_JOB_STATES
    return (
        failures >= 1
        and finished >= rollout.failure_min_sample
        and failures * 100 >= rollout.failure_percent * finished
    )


def wave_missed(rollout: HubRollout) -> bool:
    """A wave before the last finished below the success criterion (the hub pauses there)."""
    for wave in range(rollout.wave_count - 1):
        jobs = [j for j in rollout.jobs if j.wave == wave and j.state != "cancelled"]
        confirmed = sum(1 for j in jobs if j.state == "confirmed")
        if jobs and confirmed * 100 < rollout.success_percent * len(jobs):
            return True
    return False


def _threshold(rollout: HubRollout) -> list[Finding]:
    found: list[Finding] = []
    if rollout.state in ("completed", "running") and threshold_crossed(rollout):
        found.append(
            (
                "rollout_threshold_ignored",
                rollout.rollout_id,
                f"failures crossed {rollout.failure_percent}% yet the rollout is {rollout.state}",
            )
        )
    found.extend(_unexplained_stop(rollout))
    if rollout.state in STOPPED_ROLLOUT_STATES and rollout.stopped_at is not None:
        late = [
            j
            for j in (*rollout.jobs, *rollout.retired)
            if j.offered_at is not None and j.offered_at > rollout.stopped_at
        ]
        if late:
            found.append(
                (
                    "rollout_offered_after_stop",
                    rollout.rollout_id,
                    f"{len(late)} job(s) offered after the rollout was {rollout.state},"
                    f" e.g. {late[0].job_id} to {late[0].device_id}",
                )
            )
    return found


def _unexplained_stop(rollout: HubRollout) -> list[Finding]:
    """An abort or pause by the hub itself that its own rules do not explain.

    An operator's stop explains itself. Without an audit trail (``stopped_by``
    empty) the stop is judged as the hub's, over the jobs finished by
    ``stopped_at`` when known, else over every job at the end.
    """
    if rollout.state not in ("aborted", "paused"):
        return []
    if rollout.stopped_by and rollout.stopped_by != SYSTEM_ACTOR:
        return []
    if threshold_crossed(rollout, at=rollout.stopped_at):
        return []
    if rollout.state == "paused" and wave_missed(rollout):
        return []
    return [
        (
            "rollout_stop_unexplained",
            rollout.rollout_id,
            f"the hub {rollout.state} it ({rollout.reason or 'no reason'}), yet neither its"
            f" {rollout.failure_percent}% failure threshold nor a wave below its"
            f" {rollout.success_percent}% success criterion explains that",
        )
    ]
