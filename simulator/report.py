"""The run's report: JSON for machines (``--report``), a summary table for people.

JSON shape (docs/simulator.md, "Report")::

    {"scenario": str, "environment": "embedded" | "mosquitto" | "remote",
     "ok": bool, "devices": int,
     "usage": {"generated", "sent", "acknowledged", "billed", "lost", "duplicated",
               "unexpected", "unacknowledged", "resent", "ack_codes"},
     "manifests": {"converged": int, "total": int},
     "firmware": {"offered", "confirmed", "reverted", "failed", "timed_out",
                  "unentitled_offered", "devices_on_new_image",
                  "devices_on_original_image", "rollouts": [{"id", "state", "reason", "jobs"}]},
     "rollout": {"at", "package_id", "rollout_id", "image_bytes", "gated", "waves",
                 "target_count", "skipped"},
     "violations": [{"kind", "device", "detail"}, ...],
     "skipped": [str, ...],
     "scale": {"online_seconds", "connects_per_second", "memory_per_device_kib", ...},
     "faults": [...], "actions": [...], "attacks": {...}, "events": [...],
     "groups": {name: {"devices", "connects", "connection_losses", "crashes", ...}}}
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from simulator.fleet import RunOutcome


def to_json(outcome: RunOutcome) -> dict[str, Any]:
    """The report as a JSON-ready dict."""
    result, stats = outcome.result, outcome.stats
    return {
        "scenario": outcome.scenario.name,
        "environment": outcome.environment,
        "ok": result.ok,
        "devices": result.devices,
        "usage": result.usage.to_json(),
        "manifests": {"converged": result.converged, "total": result.devices},
        "firmware": result.firmware.to_json(),
        "rollout": stats.rollout,
        "violations": [v.to_json() for v in result.violations],
        "skipped": result.skipped,
        "scale": {
            "claim_seconds": round(stats.claim_seconds, 2),
            "claims_per_second": round(stats.claims_per_second, 1),
            "online_seconds": round(stats.online_seconds, 2),
            "connects_per_second": round(stats.connects_per_second, 1),
            "rss_before_mib": round(stats.rss_before_mib, 1),
            "rss_online_mib": round(stats.rss_online_mib, 1),
            "memory_per_device_kib": round(stats.memory_per_device_kib, 1),
        },
        "settle": {
            "seconds": round(stats.settle_seconds, 1),
            "converged": stats.converged_in_settle,
        },
        "faults": stats.faults,
        "actions": stats.actions,
        "attacks": _attacks(outcome),
        "groups": _groups(outcome),
        "events": outcome.recorder.events,
        "hub_exit_status": outcome.hub_exit_status,
        "api_calls": stats.api_calls,
        "api_server_errors": stats.api_server_errors,
        "wall_seconds": round(stats.wall_seconds, 1),
    }


def _attacks(outcome: RunOutcome) -> dict[str, int]:
    total: dict[str, int] = {}
    for record in outcome.recorder.devices.values():
        for name, count in record.attacks.items():
            total[name] = total.get(name, 0) + count
    return dict(sorted(total.items()))


def _groups(outcome: RunOutcome) -> dict[str, dict[str, int]]:
    groups: dict[str, dict[str, int]] = {}
    for record in outcome.recorder.devices.values():
        g = groups.setdefault(
            record.group,
            {
                "devices": 0,
                "connects": 0,
                "connection_losses": 0,
                "crashes": 0,
                "boot_epochs": 0,
                "manifests_accepted": 0,
                "usage_generated": 0,
                "usage_sent": 0,
            },
        )
        g["devices"] += 1
        g["connects"] += record.connects
        g["connection_losses"] += record.connection_losses
        g["crashes"] += record.crashes
        g["boot_epochs"] += record.boot_epochs
        g["manifests_accepted"] += record.manifests_accepted
        g["usage_generated"] += record.usage_generated
        g["usage_sent"] += len(record.usage_sent)
        g["usage_unacknowledged"] = g.get("usage_unacknowledged", 0) + len(
            set(record.usage_sent) - set(record.usage_acks)
        )
        for code, count in record.errors.items():
            g[f"error_{code}"] = g.get(f"error_{code}", 0) + count
    return groups


def write(path: Path, report: dict[str, Any]) -> None:
    """Write the JSON report (temp file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2, default=str) + "\n")
    tmp.replace(path)


def _firmware_rows(table: Table, report: dict[str, Any], mark: dict[bool, str]) -> None:
    firmware, rollout = report["firmware"], report["rollout"]
    if not rollout:
        return
    if "error" in rollout:
        table.add_row("rollout", "not started", mark[False])
        return
    table.add_row("rollout targets", str(rollout["target_count"]), "")
    for name in ("offered", "confirmed", "reverted", "failed", "timed_out"):
        table.add_row(f"firmware {name}", str(firmware[name]), "")
    table.add_row(
        "firmware unentitled offered",
        str(firmware["unentitled_offered"]),
        mark[firmware["unentitled_offered"] == 0],
    )
    for entry in firmware["rollouts"]:
        table.add_row(f"rollout {entry['id'][:8]}", entry["state"], "")


def print_summary(report: dict[str, Any], console: Console) -> None:
    """The summary table at the end of a run."""
    usage, manifests = report["usage"], report["manifests"]
    table = Table(title=f"fleet-sim: {report['scenario']} on {report['environment']}")
    table.add_column("check")
    table.add_column("value", justify="right")
    table.add_column("", justify="center")
    mark = {True: "[green]ok[/]", False: "[red]FAIL[/]"}
    table.add_row("devices", str(report["devices"]), "")
    table.add_row(
        "manifests converged",
        f"{manifests['converged']}/{manifests['total']}",
        mark[manifests["converged"] == manifests["total"]],
    )
    for name in ("generated", "sent", "acknowledged", "unacknowledged", "billed"):
        table.add_row(f"usage {name}", f"{usage[name]:,}", "")
    for name in ("lost", "duplicated", "unexpected"):
        table.add_row(f"usage {name}", f"{usage[name]:,}", mark[usage[name] == 0])
    _firmware_rows(table, report, mark)
    scale = report["scale"]
    table.add_row("claims/s (ramp)", f"{scale['claims_per_second']:,.0f}", "")
    table.add_row("connects/s (ramp)", f"{scale['connects_per_second']:,.0f}", "")
    table.add_row("memory per device", f"{scale['memory_per_device_kib']:,.0f} KiB", "")
    for fault in report["faults"]:
        state = f"skipped: {fault['skipped']}" if "skipped" in fault else "done"
        if "problem" in fault:
            state = "done, but the hub ignored SIGTERM"
        table.add_row(f"fault {fault['kind']} @{fault['at']:g}s", state, "")
    for name, count in report["attacks"].items():
        table.add_row(f"attack {name}", str(count), "")
    table.add_row("violations", str(len(report["violations"])), mark[not report["violations"]])
    console.print(table)
    for line in report["skipped"]:
        console.print(f"[yellow]not checked[/]: {line}")
    for violation in report["violations"][:30]:
        console.print(
            f"[red]violation[/] {violation['kind']} {violation['device'] or ''}: "
            f"{violation['detail']}"
        )
    if len(report["violations"]) > 30:
        console.print(f"... and {len(report['violations']) - 30} more (see the JSON report)")
