"""Fetch the hub's final account over REST, for the checker.

Devices and their current manifests come from the registry and manifest
routes. Usage and rollouts come from their feature APIs when the hub has them
(a 404 on the route means "not available", reported as skipped, never as
passed). Firmware packages of the run's device class come with their signed
envelopes, verified here against the hub's firmware trust anchor (as a device
got it when it claimed): the checker only trusts image digests an envelope
the hub signed names.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from simulator.checker import HubDevice, HubState
from simulator.fwcheck import HubJob, HubRollout, IssuedImage
from simulator.hubapi import HubApi, HubApiError
from simulator.recorder import FirmwareScope, UsageKey, envelope_image

log = logging.getLogger(__name__)

CHUNK = 200
WINDOW_START = "2000-01-01T00:00:00Z"
WINDOW_END = "2100-01-01T00:00:00Z"


async def fetch(
    api: HubApi, device_ids: Iterable[str], firmware: FirmwareScope | None = None
) -> HubState:
    """The hub's devices, manifests, usage and rollouts; ``alive=False`` if it is gone."""
    fetched_at = time.time()
    try:
        listed = await api.all_pages("/devices", {"tag": "sim"})
    except HubApiError as exc:
        log.error("the hub did not answer: %s", exc)
        return HubState(devices={}, alive=False)
    wanted = set(device_ids)
    rows = [d for d in listed if d["id"] in wanted]
    seqs: list[tuple[int | None, float | None]] = []
    for start in range(0, len(rows), CHUNK):  # bounded: a few hundred requests in flight
        chunk = rows[start : start + CHUNK]
        seqs.extend(await api.gather(_manifest_seq(api, d["id"]) for d in chunk))
    devices = {
        d["id"]: HubDevice(
            device_id=d["id"],
            serial=d["serial"],
            status=d["status"],
            manifest_seq=seq,
            online=bool(d.get("online")),
            manifest_issued_at=issued,
        )
        for d, (seq, issued) in zip(rows, seqs, strict=True)
    }
    images, found = await firmware_state(api, firmware)
    return HubState(
        devices=devices,
        usage_records=await usage_records(api, list(devices)),
        rollouts=found,
        images=images,
        fetched_at=fetched_at,
    )


async def _manifest_seq(api: HubApi, device_id: str) -> tuple[int | None, float | None]:
    """The device's current manifest sequence and when it was issued (``None``: none)."""
    try:
        manifest = await api.get(f"/devices/{device_id}/manifest")
    except HubApiError as exc:
        if exc.status == 404:
            return None, None
        raise
    return int(manifest["seq"]), _epoch(manifest.get("issued_at"))


async def usage_records(api: HubApi, device_ids: list[str]) -> dict[str, list[UsageKey]] | None:
    """Every usage record key the hub holds per device; ``None`` without a usage API.

    One scan of ``GET /usage/records`` over a window wide enough for any device
    clock (on the hub's receipt time), grouped by device.
    """
    window = {"start": WINDOW_START, "end": WINDOW_END, "by": "received"}
    probe = await api.optional_get("/usage/records", params={**window, "limit": 1})
    if probe is None:
        return None
    found: dict[str, list[UsageKey]] = {d: [] for d in device_ids}
    for item in await api.all_pages("/usage/records", window):
        held = found.get(str(item["device_id"]))
        if held is not None:  # other devices of the tenant are not this run's business
            held.append((int(item["boot_epoch"]), int(item["seq"])))
    return found


async def firmware_state(
    api: HubApi, scope: FirmwareScope | None
) -> tuple[list[IssuedImage], list[HubRollout] | None]:
    """The run's packages (envelopes verified) and rollouts with their jobs.

    ``None`` rollouts when the hub has no rollout API; none at all when the run
    has no device class to look at (a remote hub's other classes are not ours).
    """
    probe = await api.optional_get("/firmware/rollouts", params={"limit": 1})
    if probe is None:
        return [], None
    if scope is None:
        return [], []
    packages = await api.all_pages("/firmware/packages", {"device_class_id": scope.class_id})
    images = [await _issued(api, scope, p) for p in packages]
    found: list[HubRollout] = []
    for package in packages:
        for item in await api.all_pages("/firmware/rollouts", {"package_id": package["id"]}):
            found.append(await _rollout_of(api, item))
    return images, found


async def _rollout_of(api: HubApi, item: dict[str, Any]) -> HubRollout:
    """A rollout with its current and retired jobs and its state history (audit trail)."""
    path = f"/firmware/rollouts/{item['id']}/devices"
    current = await api.all_pages(path)
    every = await api.all_pages(path, {"include_retired": "true"})
    ids = {j["job_id"] for j in current}
    events = await api.all_pages(
        "/audit", {"target_type": "firmware_rollout", "target_id": str(item["id"])}
    )
    return _rollout(item, current, [j for j in every if j["job_id"] not in ids], events)


async def _issued(api: HubApi, scope: FirmwareScope, package: dict[str, Any]) -> IssuedImage:
    envelope = await api.get_bytes(f"/firmware/packages/{package['id']}/envelope")
    digest = envelope_image(envelope, scope)
    if not digest:
        log.error("package %s: its envelope does not verify", package["id"])
    return IssuedImage(
        package_id=str(package["id"]),
        sequence=int(package["sequence"]),
        digest=digest,
        verified=bool(digest),
        gated=package.get("required_product_id") is not None,
    )


@dataclass(frozen=True, slots=True)
class History:
    """What a rollout's audit trail says about its current stop and its last operator rebase."""

    stopped_at: float | None = None
    stopped_by: str = ""
    rebased_at: float | None = None


def history(state: str, events: list[dict[str, Any]]) -> History:
    """The stop that put the rollout in ``state`` and its last resume or retry.

    ``updated_at`` is no stop time: offers, retries and resumes move it. The
    audit trail holds one ``firmware.rollout.<action>`` event per state change
    (``paused``, ``aborted``, ``cancelled``, ``resume``, ``retry``, ...).
    """
    stopped_at, stopped_by, rebased_at = None, "", None
    for event in sorted(events, key=lambda e: (_epoch(e["at"]) or 0.0, int(e.get("id", 0)))):
        action = str(event["action"]).removeprefix("firmware.rollout.")
        at = _epoch(event["at"])
        if action == state:
            stopped_at, stopped_by = at, str(event.get("actor") or "")
        elif action in ("resume", "retry"):
            rebased_at = at
    return History(stopped_at, stopped_by, rebased_at)


def _rollout(
    item: dict[str, Any],
    jobs: list[dict[str, Any]],
    retired: list[dict[str, Any]] | None = None,
    events: list[dict[str, Any]] | None = None,
) -> HubRollout:
    state = str(item["state"])
    known = history(state, events or [])
    stopped = known.stopped_at
    if stopped is None and state in ("aborted", "cancelled"):
        stopped = _epoch(item.get("finished_at"))  # no audit trail: the end is the stop
    return HubRollout(
        rollout_id=str(item["id"]),
        package_id=str(item["package_id"]),
        state=state,
        reason=str(item.get("state_reason") or ""),
        failure_percent=int(item["failure_percent"]),
        failure_min_sample=int(item["failure_min_sample"]),
        success_percent=int(item.get("success_percent") or 0),
        wave_count=max(1, len(item.get("waves") or ())),
        stopped_at=stopped,
        stopped_by=known.stopped_by,
        rebased_at=known.rebased_at,
        jobs=tuple(_job(j) for j in jobs),
        retired=tuple(_job(j) for j in retired or ()),
    )


def _job(j: dict[str, Any]) -> HubJob:
    return HubJob(
        job_id=str(j["job_id"]),
        device_id=str(j["device_id"]),
        state=str(j["state"]),
        offered_at=_epoch(j.get("offered_at")),
        deadline_at=_epoch(j.get("deadline_at")),
        finished_at=_epoch(j.get("finished_at")),
        wave=int(j.get("wave") or 0),
    )


def _epoch(value: Any) -> float | None:
    """An API timestamp (ISO 8601, UTC when naive) as Unix seconds."""
    if not value:
        return None
    parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()
