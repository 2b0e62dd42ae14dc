"""Register and entitle a simulated fleet through the hub's REST API, as an operator would.

One device class; the devices by bulk CSV import (groups that claim with a
key get their Ed25519 public keys registered in the same import); one batch
claim token per token-claiming group; one product with a flag (``premium``), a
limit (``max_users``) and a metered feature (``api_calls``); one customer
account with one perpetual entitlement per group, activated on each of the
group's devices.
"""

from __future__ import annotations

import base64
import io
import uuid
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from simulator.hubapi import HubApi, HubApiError
from simulator.scenario import Scenario

IMPORT_CHUNK = 1_000
METERED_CAP = 1_000_000


@dataclass
class Fleet:
    """What provisioning created, by serial and by group."""

    class_id: str = ""
    vendor_uuid: str = ""
    class_uuid: str = ""
    product_id: str = ""
    features: dict[str, str] = field(default_factory=dict)  # key -> feature id
    account_id: str = ""
    device_ids: dict[str, str] = field(default_factory=dict)  # serial -> device id
    groups: dict[str, list[str]] = field(default_factory=dict)  # group -> serials
    tokens: dict[str, str] = field(default_factory=dict)  # group -> claim token
    keys: dict[str, Ed25519PrivateKey] = field(default_factory=dict)  # serial -> key
    entitlements: dict[str, str] = field(default_factory=dict)  # group -> entitlement id
    limit: int = 5


def serials(scenario: Scenario) -> dict[str, list[str]]:
    """Each group's serials: ``<run>-<group>-<n>``."""
    run = uuid.uuid4().hex[:6]
    sizes = scenario.group_sizes()
    return {g: [f"{run}-{g}-{i:05d}" for i in range(n)] for g, n in sizes.items()}


async def register(api: HubApi, scenario: Scenario) -> Fleet:
    """Device class, devices, claim tokens.

    Raises:
        HubApiError: the hub refused a call, or a device could not be imported.
    """
    fleet = Fleet(groups=serials(scenario))
    fleet.vendor_uuid, fleet.class_uuid = str(uuid.uuid4()), str(uuid.uuid4())
    cls = await api.post(
        "/device-classes",
        {
            "name": f"sim-{uuid.uuid4().hex[:8]}",
            "vendor_id": fleet.vendor_uuid,
            "class_id": fleet.class_uuid,
        },
    )
    fleet.class_id = cls["id"]
    rows: list[tuple[str, str]] = []
    for group in scenario.groups:
        for serial in fleet.groups[group.name]:
            public = ""
            if group.claim == "key":
                key = Ed25519PrivateKey.generate()
                fleet.keys[serial] = key
                raw = key.public_key().public_bytes(
                    serialization.Encoding.Raw, serialization.PublicFormat.Raw
                )
                public = base64.b64encode(raw).decode()
            rows.append((serial, public))
    for start in range(0, len(rows), IMPORT_CHUNK):
        await _import(api, fleet, rows[start : start + IMPORT_CHUNK])
    for group in scenario.groups:
        if group.claim == "token":
            batch = await api.post(
                "/claim-batches",
                {
                    "name": f"sim {group.name}",
                    "serials": fleet.groups[group.name],
                    "ttl_seconds": 86_400,
                },
            )
            fleet.tokens[group.name] = batch["token"]
    return fleet


async def _import(api: HubApi, fleet: Fleet, rows: list[tuple[str, str]]) -> None:
    out = io.StringIO()
    out.write("serial,device_class_id,tags,public_key\n")
    for serial, public in rows:
        out.write(f"{serial},{fleet.class_id},sim,{public}\n")
    result = await api.request(
        "POST",
        "/devices/import",
        content=out.getvalue().encode(),
        headers={"Content-Type": "text/csv"},
    )
    failed = [r for r in result["rows"] if r["status"] != "created"]
    if failed:
        raise HubApiError(f"{len(failed)} devices not imported, e.g. {failed[0]}")
    for row in result["rows"]:
        fleet.device_ids[row["serial"]] = row["device_id"]


async def sell(api: HubApi, scenario: Scenario, fleet: Fleet) -> None:
    """Product, features, account and one perpetual entitlement per group."""
    product = await api.post(
        "/products", {"sku": f"SIM-{uuid.uuid4().hex[:8].upper()}", "name": "Simulated Pro"}
    )
    fleet.product_id = product["id"]
    for body in (
        {"key": "premium", "kind": "flag"},
        {"key": "max_users", "kind": "limit", "default_limit": fleet.limit},
        {
            "key": "api_calls",
            "kind": "metered",
            "cap_per_period": METERED_CAP,
            "period": "month",
            "overage": "flag",
        },
    ):
        feature = await api.post(f"/products/{fleet.product_id}/features", body)
        fleet.features[feature["key"]] = feature["id"]
    account = await api.post("/accounts", {"name": f"Sim Customer {uuid.uuid4().hex[:6]}"})
    fleet.account_id = account["id"]
    for group in scenario.groups:
        entitlement = await api.post(
            "/entitlements",
            {
                "account_id": fleet.account_id,
                "product_id": fleet.product_id,
                "license_model": "perpetual",
                "quantity": len(fleet.groups[group.name]),
            },
        )
        fleet.entitlements[group.name] = entitlement["id"]


async def activate(api: HubApi, fleet: Fleet, group: str) -> None:
    """Activate the group's entitlement on each of its devices.

    A request retried across a hub restart may find its first attempt applied:
    ``409 already_activated`` then means done.
    """
    entitlement = fleet.entitlements[group]
    await api.gather(
        _activate_once(api, entitlement, fleet.device_ids[serial]) for serial in fleet.groups[group]
    )


async def _activate_once(api: HubApi, entitlement: str, device_id: str) -> None:
    try:
        await api.post(f"/entitlements/{entitlement}/activations", {"device_id": device_id})
    except HubApiError as exc:
        if exc.status != 409 or "already_activated" not in str(exc):
            raise


async def change_limit(api: HubApi, fleet: Fleet) -> int:
    """Raise ``max_users``: every entitled device gets a new manifest. Returns the new limit."""
    fleet.limit += 1
    await api.request(
        "PATCH",
        f"/products/{fleet.product_id}/features/{fleet.features['max_users']}",
        json={"default_limit": fleet.limit},
    )
    return fleet.limit


async def revoke(api: HubApi, fleet: Fleet, group: str) -> Any:
    """Revoke the group's entitlement."""
    entitlement = fleet.entitlements[group]
    return await api.post(f"/entitlements/{entitlement}/revoke", {"reason": "simulated churn"})
