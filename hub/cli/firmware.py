"""``hub firmware``: Firmware: catalogue, envelopes, rollouts."""

from __future__ import annotations

import typer

firmware_app = typer.Typer(help="Firmware: catalogue, envelopes, rollouts.", no_args_is_help=True)


@firmware_app.callback()
def firmware() -> None:
    """Firmware: catalogue, envelopes, rollouts."""
