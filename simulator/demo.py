"""``make demo``: the whole story on the embedded default, told by the fleet simulator.

A hub starts on the embedded broker and SQLite in a temporary directory on
free ports. Eight simulated devices (the real agent code, on one event loop)
are registered through the REST API, half with a batch claim token and half
with pre-registered keys, claim their identities over MQTT and come online.
A customer buys a product; its entitlement is activated on every device and
each agent verifies its signed manifest. Seven devices also have "firmware
care": a firmware package that requires it is uploaded and rolled out to
them in two waves (each agent verifies the signed SUIT envelope, downloads
and checks every chunk, installs into its other slot, reboots and confirms);
the eighth is never offered it. The product changes (every device gets a new
manifest), one agent crashes and restarts from its state directory, and the
devices meter usage that the hub stores once per record.

The customer's subscription started a month ago (:mod:`simulator.billing`),
so its billing period ends ten seconds into the run: the hub's own period job
(``POST /billing/run``, after a 10 s grace window) closes it and writes the
invoice for the usage the devices recorded before that instant. Then the
invariant checker's report.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from rich.console import Console
from rich.table import Table

from simulator import billing
from simulator import report as reports
from simulator.device import FLAG_FEATURE, SimDevice
from simulator.fleet import RunOptions, run
from simulator.fwcheck import FINAL_ROLLOUT_STATES
from simulator.hubapi import HubApi, HubApiError
from simulator.hubstate import WINDOW_END, WINDOW_START
from simulator.processes import ProcessError
from simulator.provision import Fleet
from simulator.scenario import Action, Fault, Group, HubOptions, RolloutPlan, Scenario

console = Console()

PERIOD_ENDS_AFTER = 10
"""Seconds into the run at which the customer's billing period ends."""
GRACE_SECONDS = 10
"""The hub's late-record window after a period ends (``HUB_BILLING_GRACE_SECONDS``)."""
UNIT_PRICE = "0.002"
PLAN = {"currency": "EUR", "model": "per_unit", "unit_price": UNIT_PRICE}

SCENARIO = Scenario(
    name="demo",
    description="provision, entitle, manifest, rollout, crash, usage, invoice",
    devices=8,
    duration_seconds=20,
    settle_seconds=60,
    heartbeat_seconds=5,
    connects_per_second=50,
    hub=HubOptions(
        manifest_lease_seconds=3600,
        manifest_renew_before_seconds=600,
        billing_grace_seconds=GRACE_SECONDS,
        billing_job_seconds=3600,  # the demo closes the period itself, when it is due
    ),
    groups=(
        Group("thermo", weight=4, claim="token", usage="steady", usage_rate=1.0),
        Group("keyed", weight=3, claim="key", usage="bursty", usage_rate=1.0),
        Group("legacy", weight=1, claim="token", usage="steady", firmware_entitled=False),
    ),
    actions=(Action(at=6.0, kind="feature_change"),),
    faults=(Fault(at=12.0, kind="agent_crash", fraction=0.125),),
    rollout=RolloutPlan(
        at=2.0,
        image_kib=512,  # 32 chunks a device: the waves can be watched
        waves=(30, 70),
        success_percent=80,
        failure_percent=20,
        failure_min_sample=3,
        failure_action="abort",
        device_timeout_seconds=60,
    ),
)

_STORY = {
    "hub": "hub started: embedded amqtt broker + SQLite, temporary directory, free ports",
    "provision": "registered 8 devices over REST: 5 with a batch claim token, 3 with"
    " pre-registered Ed25519 keys; product (premium flag, max_users limit, metered"
    ' api_calls), a "firmware care" product for 7 of them, customer account, entitlements',
    "claim": "every device claimed its identity over MQTT (signed claim, hub-issued"
    " credentials and trust anchors, kept in each device's state directory)",
    "online": "every device is online (real agent sessions, one event loop)",
    "entitle": "entitlements activated on every device: the hub signs a manifest per"
    " device, each agent verifies it and enables its features",
    "run": "20 s of life: a firmware rollout, the product's max_users changed (new"
    " manifests for all), one agent crashed and restarted from disk, usage metered all along",
    "settle": "settled: every device holds the hub's latest manifest, every usage"
    " record answered, the rollout finished",
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
        line = _STORY.get(phase)
        if phase == "settle" and info != "settled":
            line = f"settle phase ended: {info}"
        if line:
            console.print(f"[green]✔[/] {line}")


class Demo:
    """The demo's own steps around the run: subscription, rollout progress, tables."""

    def __init__(self) -> None:
        self.subscription: billing.Subscription | None = None
        self.watcher: asyncio.Task[None] | None = None
        self.devices: list[SimDevice] = []

    async def before_run(self, api: HubApi, fleet: Fleet, devices: list[SimDevice]) -> None:
        """The customer's month-old subscription and its price; start watching rollouts."""
        self.devices = devices
        end = datetime.fromtimestamp(int(time.time()) + PERIOD_ENDS_AFTER, UTC)
        self.subscription = await billing.subscribe(
            api, fleet, period_end=end, quantity=len(devices), plan=PLAN
        )
        months = self.subscription.months
        ago = "a month" if months == 1 else f"{months} months"
        started = f"{self.subscription.anchor:%Y-%m-%d %H:%M:%S}"
        console.print(
            f"[green]✔[/] the customer subscribed {ago} ago ({started} UTC): its billing"
            f" period ends today at {end:%H:%M:%S} UTC, {PERIOD_ENDS_AFTER} s into the run;"
            f" API calls priced at EUR {UNIT_PRICE} each (a price plan over REST)"
        )
        self.watcher = asyncio.ensure_future(_watch_rollout(api))

    async def inspect(self, api: HubApi, fleet: Fleet, devices: list[SimDevice]) -> None:
        """The demo's tables, read from the hub and from each device's own state."""
        if self.watcher is not None:
            self.watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.watcher
        await _devices_table(api, devices)
        await _rollout_outcome(api)
        await _usage(api)
        await self._invoice(api, fleet)

    async def _invoice(self, api: HubApi, fleet: Fleet) -> None:
        subscription = self.subscription
        assert subscription is not None
        due = subscription.period_end + timedelta(seconds=GRACE_SECONDS)
        wait = due.timestamp() - time.time()
        if wait > 0:  # the grace window is the hub's rule: wait it out, never skip it
            console.print(f"waiting {wait:.0f} s for the period's grace window to pass")
            await asyncio.sleep(wait + 0.5)
        ran = await billing.close_periods(api)
        console.print(
            f"POST /billing/run: {ran['opened']} period(s) opened,"
            f" {len(ran['closed_periods'])} closed, {len(ran['invoices'])} invoice(s) written"
        )
        for invoice in await billing.invoices(api, fleet.account_id):
            _print_invoice(invoice)
        metered = billing.metered_before((d.record for d in self.devices), subscription.period_end)
        console.print(
            f"the devices' own count: {metered} api_calls recorded before"
            f" {subscription.period_end:%H:%M:%S} and acknowledged by the hub"
        )


async def _watch_rollout(api: HubApi) -> None:
    """Print the rollout's progress whenever its state, wave or job counts change."""
    last: tuple[Any, ...] = ()
    while True:
        await asyncio.sleep(0.5)
        try:
            page = await api.get("/firmware/rollouts", params={"limit": 1}, retry_for=5.0)
        except HubApiError:
            continue
        if not page["items"]:
            continue
        rollout = page["items"][0]
        counts = {k: v for k, v in sorted(rollout["counts"].items()) if v}
        now = (rollout["state"], rollout["current_wave"], tuple(counts.items()))
        if now != last:
            last = now
            jobs = ", ".join(f"{n} {state}" for state, n in counts.items()) or "no jobs yet"
            console.print(
                f"  rollout {rollout['package_version']}: {rollout['state']}, wave"
                f" {rollout['current_wave'] + 1}/{len(rollout['waves'])}: {jobs}"
            )
        if rollout["state"] in FINAL_ROLLOUT_STATES - {"draft"}:
            return


async def _devices_table(api: HubApi, devices: list[SimDevice]) -> None:
    table = Table(
        title="devices: the hub's view (manifest seq ✔ acknowledged, firmware installed)"
        " | the device's own (manifest seq, premium, firmware sequence and slot it runs)"
    )
    for column in (
        "device",
        "online",
        "seq",
        "firmware",
        "| seq",
        FLAG_FEATURE,
        "runs",
        "boots",
        "acked",
    ):
        table.add_column(column)
    for device in sorted(devices, key=lambda d: d.spec.serial):
        hub = await api.get(f"/devices/{device.device_id}")
        manifest = await api.get(f"/devices/{device.device_id}/manifest")
        firmware = await api.get(f"/devices/{device.device_id}/firmware")
        enabled = device.features.is_enabled(FLAG_FEATURE) if device.features else False
        record = device.record
        _, group, number = device.spec.serial.split("-")
        table.add_row(
            f"{group}-{int(number)}",
            "yes" if hub["online"] else "no",
            f"{manifest['seq']} {'✔' if manifest['delivery_state'] == 'acknowledged' else '…'}",
            firmware["installed_version"] or "factory",
            f"| {record.manifest_seq}",
            "on" if enabled else "off",
            _runs(device),
            str(record.boot_epochs),
            str(len(record.usage_acks)),
        )
    console.print(table)


def _runs(device: SimDevice) -> str:
    """What the device's bootloader runs: the factory image or a confirmed sequence."""
    if device.firmware is None:
        return "?"
    seq = device.firmware.installed_seq
    return f"{seq or 'factory'} ({device.firmware.running_slot})"


async def _rollout_outcome(api: HubApi) -> None:
    page = await api.get("/firmware/rollouts", params={"limit": 1})
    if not page["items"]:
        console.print("[red]no rollout was started[/]")
        return
    rollout = page["items"][0]
    skipped = ", ".join(f"{n} {why}" for why, n in rollout["skipped"].items()) or "none"
    console.print(
        f"rollout of firmware {rollout['package_version']}: {rollout['state']}"
        f" ({rollout['state_reason']}); {rollout['target_count']} targeted, skipped: {skipped}"
    )


async def _usage(api: HubApi) -> None:
    window = {"start": WINDOW_START, "end": WINDOW_END, "by": "received"}
    totals = await api.get("/usage", params={**window, "group_by": "meter"})
    items = totals["items"] if isinstance(totals, dict) else totals
    calls = next((t for t in items if t["keys"].get("meter") == "api_calls"), None)
    units = int(float(calls["value"])) if calls else 0
    records = calls["records"] if calls else 0
    console.print(
        f"usage stored by the hub: {records} records, {units} api_calls "
        "(each record once, keyed by device, boot epoch and sequence)"
    )


def _print_invoice(invoice: dict[str, Any]) -> None:
    table = Table(
        title=f"invoice {invoice['number'] or '(draft)'} ({invoice['status']}),"
        f" period {invoice['period_start'][:19]} → {invoice['period_end'][:19]} UTC"
    )
    for column in ("kind", "meter", "quantity", f"amount {invoice['currency']}"):
        table.add_column(column, justify="right")
    for line in invoice["lines"]:
        table.add_row(line["kind"], line["meter"] or "", line["quantity"], line["amount_decimal"])
    table.add_row("total", "", "", invoice["total_decimal"])
    console.print(table)


def main() -> int:
    """Run the demo; returns the process exit status."""
    console.print("[bold]IoT entitlement hub: the whole story on the embedded default[/]")
    demo = Demo()
    options = RunOptions(
        broker="embedded", progress=Story(), inspect=demo.inspect, before_run=demo.before_run
    )
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
