"""Register and entitle a simulated fleet through the hub's REST API, as an operator would.

One device class; the devices by bulk CSV import (groups that claim with a
key get their Ed25519 public keys registered in the same import); one batch
claim token per token-claiming group; one product with a flag (``premium``), a
limit (``max_users``) and a metered feature (``api_calls``); one customer
account with one perpetual entitlement per group, activated on each of the
group's devices. A scenario with a rollout also gets a "firmware care"
product (flag ``ota``) that gated firmware requires, sold to every group with
``firmware_entitled`` (the others must never be offered gated firmware).

Calls that may be retried across a hub restart (activations, revocations,
and those of :mod:`simulator.rollout`) treat "already applied" as done: a
request whose answer was lost may have been committed. The creations of the
sale (products, features, the account, entitlements) are looked up before
they are sent again (:meth:`~simulator.hubapi.HubApi.post_once`): a lost
answer never creates a second entitlement or trips over a duplicate SKU.
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
OTA_FEATURE = "ota"
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
    ota_product_id: str = ""  # the product gated firmware requires ('' without a rollout)
    ota_entitlements: dict[str, str] = field(default_factory=dict)  # group -> entitlement id


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
    product = await _product(api, f"SIM-{uuid.uuid4().hex[:8].upper()}", "Simulated Pro")
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
        feature = await _feature(api, fleet.product_id, body)
        fleet.features[feature["key"]] = feature["id"]
    name = f"Sim Customer {uuid.uuid4().hex[:6]}"
    account = await api.post_once(
        "/accounts", {"name": name}, lambda: _find(api, "/accounts", {}, name=name)
    )
    fleet.account_id = account["id"]
    for group in scenario.groups:
        fleet.entitlements[group.name] = await _entitlement(
            api, fleet, fleet.product_id, len(fleet.groups[group.name]), fleet.entitlements
        )
    if scenario.rollout is not None and scenario.rollout.gated:
        await _sell_firmware_care(api, scenario, fleet)


async def _sell_firmware_care(api: HubApi, scenario: Scenario, fleet: Fleet) -> None:
    """The product gated firmware requires, sold to the groups entitled to firmware."""
    product = await _product(api, f"SIM-OTA-{uuid.uuid4().hex[:8].upper()}", "Firmware care")
    fleet.ota_product_id = product["id"]
    await _feature(api, fleet.ota_product_id, {"key": OTA_FEATURE, "kind": "flag"})
    for group in scenario.groups:
        if not group.firmware_entitled:
            continue
        fleet.ota_entitlements[group.name] = await _entitlement(
            api, fleet, fleet.ota_product_id, len(fleet.groups[group.name]), fleet.ota_entitlements
        )


async def _product(api: HubApi, sku: str, name: str) -> Any:
    body = {"sku": sku, "name": name}
    return await api.post_once("/products", body, lambda: _find(api, "/products", {}, sku=sku))


async def _feature(api: HubApi, product_id: str, body: dict[str, Any]) -> Any:
    path = f"/products/{product_id}/features"
    return await api.post_once(path, body, lambda: _find(api, path, {}, key=body["key"]))


async def _entitlement(
    api: HubApi, fleet: Fleet, product_id: str, quantity: int, known: dict[str, str]
) -> str:
    """A perpetual entitlement of the fleet's account; ``known``: those already created.

    Created one at a time, so the one of the account and product that is not
    known yet is the lost answer's.
    """
    body = {
        "account_id": fleet.account_id,
        "product_id": product_id,
        "license_model": "perpetual",
        "quantity": quantity,
    }

    async def find() -> Any | None:
        listed = await api.all_pages(
            "/entitlements", {"account_id": fleet.account_id, "product_id": product_id}
        )
        return next((e for e in listed if e["id"] not in known.values()), None)

    created = await api.post_once("/entitlements", body, find)
    return str(created["id"])


async def _find(api: HubApi, path: str, params: dict[str, Any], **match: Any) -> Any | None:
    """The first item of a listing whose fields equal ``match`` (``None``: there is none)."""
    for item in await api.all_pages(path, params):
        if all(item.get(k) == v for k, v in match.items()):
            return item
    return None


async def activate(api: HubApi, fleet: Fleet, group: str) -> None:
    """Activate the group's entitlements (and firmware care, if it has it) on its devices.

    A request retried across a hub restart may find its first attempt applied:
    ``409 already_activated`` then means done.
    """
    for entitlement in (fleet.entitlements[group], fleet.ota_entitlements.get(group)):
        if entitlement is None:
            continue
        await api.gather(
            _activate_once(api, entitlement, fleet.device_ids[serial])
            for serial in fleet.groups[group]
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
    """Revoke the group's entitlement.

    Retried across a hub restart, the revocation may have been applied:
    ``409 invalid_state`` on an entitlement that is ``revoked`` means done.
    """
    entitlement = fleet.entitlements[group]
    try:
        return await api.post(f"/entitlements/{entitlement}/revoke", {"reason": "simulated churn"})
    except HubApiError as exc:
        if exc.status != 409:
            raise
        current = await api.get(f"/entitlements/{entitlement}")
        if current["status"] != "revoked":
            raise
        return current
