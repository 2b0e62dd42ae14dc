"""``hub usage``: Usage: records, meters, exports."""

from __future__ import annotations

import typer

usage_app = typer.Typer(help="Usage: records, meters, exports.", no_args_is_help=True)


@usage_app.callback()
def usage() -> None:
    """Usage: records, meters, exports."""
