"""A firmware rollout through the hub's REST API, as an operator would drive it.

:func:`image` makes a reproducible image for the run's device class;
:func:`start` uploads it as a package (``multipart/form-data``, gated on the
firmware-care product when the plan says so), creates a rollout with the
plan's waves, success criterion, failure threshold and device time-out, and
starts it. The devices then do the rest with the real agent code: download,
verify, install, reboot, health check, confirm or revert.

Every call may be retried across a hub restart (a ``hub_kill`` fault can land
in the middle), so each treats "already applied" as done: an upload whose
answer was lost shows up as ``409 duplicate_version`` or in the class's
package list; a rollout creation is looked up by its (per-run) name before it
is sent again; a start answered ``409 invalid_state`` is done when the
rollout is no longer a draft.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Any

from simulator.hubapi import HubApi, HubApiError
from simulator.provision import OTA_FEATURE, Fleet
from simulator.scenario import RolloutPlan

VERSION = "1.1.0"
"""The version uploaded (the run's device class is new, so any version is its first)."""


@dataclass(frozen=True, slots=True)
class Started:
    """What :func:`start` created."""

    package_id: str
    rollout_id: str
    digest: str  # hex SHA-256 of the image
    target_count: int
    skipped: dict[str, int]


def image(plan: RolloutPlan, seed: int, class_uuid: str) -> bytes:
    """A reproducible image of ``plan.image_kib`` KiB for one device class."""
    rng = random.Random(f"{seed}:{class_uuid}")  # noqa: S311 - test data, not crypto
    return rng.randbytes(plan.image_kib * 1024)


async def start(api: HubApi, fleet: Fleet, plan: RolloutPlan, payload: bytes) -> Started:
    """Upload ``payload`` and start a rollout of it to the fleet's class.

    Raises:
        HubApiError: the hub refused a call or stayed unreachable.
    """
    package = await upload(api, fleet, plan, payload)
    name = f"sim {fleet.class_uuid[:8]} {VERSION}"
    rollout = await api.create_once(
        "POST",
        "/firmware/rollouts",
        lambda: _find_rollout(api, package["id"], name),
        json={
            "name": name,
            "package_id": package["id"],
            "waves": [{"percent": p} for p in plan.waves],
            "success_percent": plan.success_percent,
            "failure_percent": plan.failure_percent,
            "failure_min_sample": plan.failure_min_sample,
            "failure_action": plan.failure_action,
            "device_timeout_seconds": plan.device_timeout_seconds,
        },
    )
    started = await _start_once(api, rollout["id"])
    return Started(
        package_id=package["id"],
        rollout_id=rollout["id"],
        digest=hashlib.sha256(payload).hexdigest(),
        target_count=int(started.get("target_count", 0)),
        skipped=dict(started.get("skipped") or {}),
    )


async def upload(api: HubApi, fleet: Fleet, plan: RolloutPlan, payload: bytes) -> Any:
    """``POST /firmware/packages``; a lost answer is found by version."""
    fields = {"device_class_id": fleet.class_id, "version": VERSION, "release_notes": "fleet-sim"}
    if plan.gated:
        fields |= {"required_product_id": fleet.ota_product_id, "required_feature": OTA_FEATURE}
    try:
        return await api.create_once(
            "POST",
            "/firmware/packages",
            lambda: _find_package(api, fleet.class_id),
            data=fields,
            files={"file": ("image.bin", payload, "application/octet-stream")},
        )
    except HubApiError as exc:
        if exc.status != 409 or "duplicate_version" not in str(exc):
            raise
        found = await _find_package(api, fleet.class_id)
        if found is None:
            raise
        return found


async def _find_package(api: HubApi, class_id: str) -> Any | None:
    page = await api.get("/firmware/packages", params={"device_class_id": class_id})
    return next((p for p in page["items"] if p["version"] == VERSION), None)


async def _find_rollout(api: HubApi, package_id: str, name: str) -> Any | None:
    page = await api.get("/firmware/rollouts", params={"package_id": package_id})
    return next((r for r in page["items"] if r["name"] == name), None)


async def _start_once(api: HubApi, rollout_id: str) -> Any:
    try:
        return await api.post(f"/firmware/rollouts/{rollout_id}/start")
    except HubApiError as exc:
        if exc.status != 409:
            raise
        current = await api.get(f"/firmware/rollouts/{rollout_id}")
        if current["state"] == "draft":
            raise
        return current  # the first attempt started it
