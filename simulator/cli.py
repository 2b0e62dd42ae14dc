"""``fleet-sim``: the fleet simulator's command line.

``fleet-sim run`` runs a scenario (a shipped one by name, or a TOML file) or a
plain fleet from flags, prints a progress bar and a summary table, writes the
JSON report with ``--report`` and exits 1 when an invariant is violated (2 for
a usage or set-up error). ``fleet-sim scenarios`` lists the shipped scenarios.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from simulator import report as reports
from simulator import scenario as scenarios
from simulator.environment import Environment
from simulator.fleet import RunOptions, run
from simulator.processes import ProcessError

log = logging.getLogger(__name__)

app = typer.Typer(
    help="Fleet simulator: many real agents against a hub, with faults.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)


class _Bar:
    """A rich progress bar with one line per phase."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.tasks: dict[str, TaskID] = {}

    def __call__(self, phase: str, done: float, total: float, info: str) -> None:
        task = self.tasks.get(phase)
        if task is None:
            task = self.tasks[phase] = self.progress.add_task(phase, total=total or 1, info=info)
        self.progress.update(task, completed=done, total=total or 1, info=info)


@app.command("run")
def run_command(  # noqa: PLR0917 - typer options are parameters
    scenario: Annotated[
        str | None, typer.Option("--scenario", "-s", help="a shipped scenario name or a TOML file")
    ] = None,
    devices: Annotated[int | None, typer.Option(help="number of devices (overrides)")] = None,
    duration: Annotated[float | None, typer.Option(help="run seconds (overrides)")] = None,
    report: Annotated[Path | None, typer.Option(help="write the JSON report here")] = None,
    broker: Annotated[
        str, typer.Option(help="embedded or mosquitto (a hub we start)")
    ] = "embedded",
    database_url: Annotated[str | None, typer.Option(help="database for the hub we start")] = None,
    hub_url: Annotated[str | None, typer.Option(help="use a running hub's REST API")] = None,
    api_key: Annotated[
        str | None, typer.Option(envvar="HUB_API_KEY", help="admin key of the running hub's tenant")
    ] = None,
    mqtt: Annotated[
        str, typer.Option(help="running hub: device broker host:port")
    ] = "127.0.0.1:1883",
    claim_mqtt: Annotated[
        str | None, typer.Option(help="running hub: claim broker host:port (default: --mqtt)")
    ] = None,
    work_dir: Annotated[
        Path | None,
        typer.Option(
            help="device state and hub data here (default: a temporary directory, removed)"
        ),
    ] = None,
    quiet: Annotated[bool, typer.Option(help="no progress bar")] = False,
) -> None:
    """Run a simulated fleet against a hub and check the invariants."""
    try:
        chosen = scenarios.load(scenario) if scenario else scenarios.Scenario(name="flags")
        chosen = chosen.with_overrides(devices=devices, duration=duration)
        chosen.group_sizes()
    except scenarios.ScenarioError as exc:
        console.print(f"[red]fleet-sim: {exc}[/]")
        raise typer.Exit(2) from None
    remote = _remote(hub_url, api_key, mqtt, claim_mqtt)
    level = os.environ.get("FLEET_SIM_LOG_LEVEL")
    logging.basicConfig(level=level or "WARNING")
    if level is None:  # thousands of agents would drown the progress bar
        logging.getLogger("device_agent").setLevel(logging.ERROR)
    with Progress(
        TextColumn("{task.description:>10}"),
        BarColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        console=console,
        disable=quiet,
        transient=False,
    ) as progress:
        bar = _Bar(progress)
        options = RunOptions(
            broker=broker,
            database_url=database_url,
            work_dir=work_dir,
            keep_work_dir=work_dir is not None,
            remote=remote,
            progress=bar,
        )
        try:
            outcome = asyncio.run(run(chosen, options))
        except (ProcessError, OSError) as exc:
            console.print(f"[red]fleet-sim: could not run: {exc}[/]")
            raise typer.Exit(2) from None
        except Exception as exc:  # a defect or an environment failure: say which, exit 2
            log.exception("fleet-sim: the run failed")
            console.print(f"[red]fleet-sim: the run failed: {type(exc).__name__}: {exc}[/]")
            raise typer.Exit(2) from None
    data = reports.to_json(outcome)
    if remote is not None:
        data["environment"] = "remote"
    reports.print_summary(data, Console())
    if report is not None:
        reports.write(report, data)
        console.print(f"report written to {report}")
    raise typer.Exit(0 if outcome.result.ok else 1)


@app.command("scenarios")
def list_scenarios() -> None:
    """List the shipped scenarios."""
    for name in scenarios.shipped():
        chosen = scenarios.load(name)
        typer.echo(f"{name:10} {chosen.devices:6} devices  {chosen.description}")


def _remote(
    hub_url: str | None, api_key: str | None, mqtt: str, claim_mqtt: str | None
) -> Environment | None:
    if hub_url is None:
        return None
    if not api_key:
        console.print("[red]fleet-sim: --hub-url needs --api-key (or HUB_API_KEY)[/]")
        raise typer.Exit(2)
    host, port = _host_port(mqtt)
    claim_host, claim_port = _host_port(claim_mqtt or mqtt)
    return Environment(
        kind="remote",
        api_url=hub_url,
        api_key=api_key,
        host=host,
        port=port,
        claim_host=claim_host,
        claim_port=claim_port,
    )


def _host_port(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit():
        console.print(f"[red]fleet-sim: {value!r} is not host:port[/]")
        raise typer.Exit(2)
    return host, int(port)
