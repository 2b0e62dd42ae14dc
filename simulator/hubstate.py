"""Fetch the hub's final account over REST, for the checker.

Devices and their current manifests come from the registry and manifest
routes. Usage and rollouts come from their feature APIs when the hub has them
(a 404 on the route means "not available", reported as skipped, never as
passed).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from simulator.checker import HubDevice, HubState
from simulator.hubapi import HubApi, HubApiError
from simulator.recorder import UsageKey

log = logging.getLogger(__name__)

CHUNK = 200
WINDOW_START = "2000-01-01T00:00:00Z"
WINDOW_END = "2100-01-01T00:00:00Z"


async def fetch(api: HubApi, device_ids: Iterable[str]) -> HubState:
    """The hub's devices, manifests, usage and rollouts; ``alive=False`` if it is gone."""
    try:
        listed = await api.all_pages("/devices", {"tag": "sim"})
    except HubApiError as exc:
        log.error("the hub did not answer: %s", exc)
        return HubState(devices={}, alive=False)
    wanted = set(device_ids)
    rows = [d for d in listed if d["id"] in wanted]
    seqs: list[int | None] = []
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
        )
        for d, seq in zip(rows, seqs, strict=True)
    }
    return HubState(
        devices=devices,
        usage_records=await usage_records(api, list(devices)),
        rollouts=await rollouts(api),
    )


async def _manifest_seq(api: HubApi, device_id: str) -> int | None:
    try:
        manifest = await api.get(f"/devices/{device_id}/manifest")
    except HubApiError as exc:
        if exc.status == 404:
            return None
        raise
    return int(manifest["seq"])


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


async def rollouts(api: HubApi) -> list[Mapping[str, Any]] | None:
    """The hub's rollouts, or ``None`` when it has no rollout API."""
    found = await api.optional_get("/firmware/rollouts", params={"limit": 500})
    if found is None:
        return None
    items = found["items"] if isinstance(found, dict) else found
    return [dict(item) for item in items]
