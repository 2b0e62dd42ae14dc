"""``fleet-sim``: the fleet simulator's command line.

The simulator (scenarios, fault injection, invariant checker) is tracked as
its own issue; until it lands this command says so and exits non-zero rather
than pretending to run anything.
"""

from __future__ import annotations

import typer

app = typer.Typer(help="Fleet simulator.", add_completion=False)


@app.command()
def run() -> None:
    """Run a simulated fleet against a hub (not available yet)."""
    typer.echo(
        "fleet-sim: the simulator is not built yet; use `make demo` to run real agents", err=True
    )
    raise typer.Exit(2)
