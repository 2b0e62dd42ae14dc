"""``make demo``: the whole story on the embedded default, told by the fleet simulator.

A hub starts on the embedded broker and SQLite in a temporary directory on
free ports. Eight simulated devices (the real agent code, on one event loop)
are registered through the REST API, half with a batch claim token and half
with pre-registered keys, claim their identities over MQTT and come online.
A customer buys a product; its entitlement is activated on every device and
each agent verifies its signed manifest. The product changes (every device
gets a new manifest), one agent crashes and restarts from its state
directory, the devices meter usage that the hub stores once per record, and
the month-to-date usage is priced. Then the invariant checker's report.

Steps whose hub API is not there yet are named as such, never faked.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from rich.console import Console
from rich.table import Table

from simulator import report as reports
from simulator.device import FLAG_FEATURE, SimDevice
from simulator.fleet import RunOptions, run
from simulator.hubapi import HubApi, HubApiError
from simulator.hubstate import WINDOW_END, WINDOW_START
from simulator.processes import ProcessError
from simulator.provision import Fleet
from simulator.scenario import Action, Fault, Group, HubOptions, Scenario

console = Console()

SCENARIO = Scenario(
    name="demo",
    description="provision, entitle, manifest, crash, usage, price",
    devices=8,
    duration_seconds=20,
    settle_seconds=60,
    heartbeat_seconds=5,
    connects_per_second=50,
    hub=HubOptions(manifest_lease_seconds=3600, manifest_renew_before_seconds=600),
    groups=(
        Group("thermo", claim="token", usage="steady", usage_rate=1.0),
        Group("keyed", claim="key", usage="bursty", usage_rate=1.0),
    ),
    actions=(Action(at=6.0, kind="feature_change"),),
    faults=(Fault(at=12.0, kind="agent_crash", fraction=0.125),),
)

_STORY = {
    ("hub", True): "hub started: embedded amqtt broker + SQLite, temporary directory, free ports",
    ("provision", True): "registered 8 devices over REST: 4 with a batch claim token, 4 with"
    " pre-registered Ed25519 keys; product (premium flag, max_users limit, metered"
    " api_calls), customer account, one entitlement per group",
    ("claim", True): "every device claimed its identity over MQTT (signed claim, hub-issued"
    " credentials and trust anchors, kept in each device's state directory)",
    ("online", True): "every device is online (real agent sessions, one event loop)",
    ("entitle", True): "entitlements activated on every device: the hub signs a manifest per"
    " device, each agent verifies it and enables its features",
    ("run", True): "20 s of life: the product's max_users changed (new manifests for all),"
    " one agent crashed and restarted from disk, usage metered all along",
    ("settle", True): "settled: every device holds the hub's latest manifest, every usage"
    " record answered",
}


class Story:
    """Prints one line per finished phase (no progress bar: the demo is read)."""

    def __init__(self) -> None:
        self.told: set[str] = set()

    def __call__(self, phase: str, done: float, total: float, info: str) -> None:
        """Tell a phase once, when it completes."""
        if phase in self.told or done < total:
            return
        self.told.add(phase)
        line = _STORY.get((phase, True))
        if phase == "settle" and info != "settled":
            line = f"settle phase ended: {info}"
        if line:
            console.print(f"[green]✔[/] {line}")


async def inspect(api: HubApi, fleet: Fleet, devices: list[SimDevice]) -> None:
    """The demo's tables, read from the hub and from each device's own state."""
    await _devices_table(api, devices)
    await _usage_and_price(api, fleet)
    await _rollouts(api)


async def _devices_table(api: HubApi, devices: list[SimDevice]) -> None:
    table = Table(title="devices: the hub's view | the device's own state")
    for column in (
        "device",
        "online",
        "hub seq",
        "delivery",
        "| seq",
        FLAG_FEATURE,
        "boots",
        "usage acked",
    ):
        table.add_column(column)
    for device in sorted(devices, key=lambda d: d.spec.serial):
        hub = await api.get(f"/devices/{device.device_id}")
        manifest = await api.get(f"/devices/{device.device_id}/manifest")
        enabled = device.features.is_enabled(FLAG_FEATURE) if device.features else False
        record = device.record
        table.add_row(
            device.spec.serial.split("-", 1)[1],
            "yes" if hub["online"] else "no",
            str(manifest["seq"]),
            manifest["delivery_state"],
            f"| {record.manifest_seq}",
            "on" if enabled else "off",
            str(record.boot_epochs),
            str(len(record.usage_acks)),
        )
    console.print(table)


async def _usage_and_price(api: HubApi, fleet: Fleet) -> None:
    window = {"start": WINDOW_START, "end": WINDOW_END, "by": "received"}
    totals = await api.optional_get("/usage", params={**window, "group_by": "meter"})
    if totals is None:
        console.print("[yellow]usage: the hub has no usage API yet[/]")
        return
    items = totals["items"] if isinstance(totals, dict) else totals
    calls = next((t for t in items if t["keys"].get("meter") == "api_calls"), None)
    units = int(float(calls["value"])) if calls else 0
    records = calls["records"] if calls else 0
    console.print(
        f"usage stored by the hub: {records} records, {units} api_calls "
        "(each record once, keyed by device, boot epoch and sequence)"
    )
    plan = {"currency": "EUR", "model": "per_unit", "unit_price": "0.002"}
    try:
        charge = await api.post("/billing/preview", {"plan": plan, "quantity": units})
    except HubApiError as exc:
        console.print(f"[yellow]pricing: not available ({exc})[/]")
        return
    console.print(
        f"priced at EUR 0.002 per call: {_money(charge)} month to date (POST /billing/preview)"
    )
    invoices = await api.optional_get("/invoices", params={"account_id": fleet.account_id})
    if invoices is None:
        console.print("[yellow]invoices: the hub has no invoice API yet[/]")
        return
    count = (
        invoices.get("total", len(invoices.get("items", []))) if isinstance(invoices, dict) else 0
    )
    console.print(
        f"invoices for the account so far: {count} (an invoice is issued when the"
        " billing period closes, after its grace window: `hub billing run`)"
    )


def _money(charge: dict[str, Any]) -> str:
    total = charge.get("total_minor", charge.get("total"))
    currency = charge.get("currency", "EUR")
    if isinstance(total, int):
        return f"{currency} {total / 100:.2f}"
    return f"{currency} {total}"


async def _rollouts(api: HubApi) -> None:
    rollouts = await api.optional_get("/firmware/rollouts")
    if rollouts is None:
        console.print("[yellow]firmware rollouts: the hub has no rollout API yet[/]")
        return
    console.print(
        "[yellow]firmware rollouts: the hub's API is there; the simulator does not"
        " upload a package and start a rollout yet (not shown)[/]"
    )


def main() -> int:
    """Run the demo; returns the process exit status."""
    console.print("[bold]IoT entitlement hub: the whole story on the embedded default[/]")
    options = RunOptions(broker="embedded", progress=Story(), inspect=inspect)
    try:
        outcome = asyncio.run(run(SCENARIO, options))
    except (ProcessError, OSError, HubApiError) as exc:
        console.print(f"[red]demo failed: {exc}[/]")
        return 1
    data = reports.to_json(outcome)
    reports.print_summary(data, console)
    console.print(
        f"hub stopped (exit status {outcome.hub_exit_status}); "
        f"done in {outcome.stats.wall_seconds:.0f}s"
    )
    return 0 if outcome.result.ok and outcome.hub_exit_status == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
