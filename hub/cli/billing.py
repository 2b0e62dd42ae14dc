"""Billing commands: ``hub billing preview``.

Like the other commands, ``preview`` asks a running hub over its REST API
(``--api-url`` / ``HUB_API_URL``, ``--api-key`` / ``HUB_API_KEY``) and exits 1
with the server's message on error. ``--local`` prices in-process instead (the
same pure code the hub runs; no hub or key needed). It prints the breakdown as
a table, or the API's JSON with ``--json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from hub.cli import common
from hub.cli.common import DEFAULT_API_URL, ApiKeyOpt, ApiUrl, JsonOut

billing_app = typer.Typer(help="Billing: price plans and previews.", no_args_is_help=True)


@billing_app.callback()
def billing() -> None:
    """Billing: price plans and previews."""


_LINE_COLUMNS = ("description", "units", "unit_price", "flat_fee", "amount")


def _read_plan(plan: str) -> Any:
    """Decode ``plan``: inline JSON (starts with ``{``), ``-`` for stdin, or a file path."""
    text = plan
    if plan == "-":
        text = sys.stdin.read()
    elif not plan.lstrip().startswith("{"):
        path = Path(plan)
        if not path.is_file():
            common.fail(f"no such plan file: {plan} (pass a path, '-' or inline JSON)")
        text = path.read_text(encoding="utf-8")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        common.fail(f"plan is not valid JSON: {exc}")


def _quantity(text: str) -> int | str:
    """Send integers as JSON integers and anything else as a decimal string."""
    return int(text) if text.isdigit() else text


def _price_locally(plan: Any, quantity: int | str) -> dict[str, Any]:
    """Price in-process; print the typed error and exit 1 on bad input."""
    from pydantic import ValidationError

    from hub.billing.plans import PreviewRequest, preview
    from hub.errors import HubError

    try:
        request = PreviewRequest.model_validate({"plan": plan, "quantity": quantity})
        return preview(request).model_dump(mode="json")
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        common.fail(f"validation_failed: {where}: {first['msg']}")
    except HubError as exc:
        common.fail(f"{exc.code}: {exc}")


def _show_charge(charge: dict[str, Any]) -> None:
    table = Table(title=f"{charge['quantity']} units, {charge['currency']}")
    for column in _LINE_COLUMNS:
        if column == "description":
            table.add_column(column, ratio=1)
        else:  # never cut a number short: fold it over lines instead
            table.add_column(column, justify="right", overflow="fold")
    for line in charge["lines"]:
        cells = {**line, "amount": line["amount_decimal"]}
        table.add_row(*(common.cell(cells.get(column)) for column in _LINE_COLUMNS))
    common.console.print(table)
    total = f"total: {charge['total_decimal']} {charge['currency']}"
    common.console.print(Text(f"{total} ({charge['total']} minor units)", style="bold"))
    common.console.print(Text(f"each line rounded {charge['rounding']} once", style="dim"))


@billing_app.command("preview")
def preview(
    plan: Annotated[str, typer.Argument(help="plan JSON: a file path, '-' for stdin, or inline")],
    quantity: Annotated[str, typer.Argument(help="quantity, e.g. 1500 or 2.5")],
    local: Annotated[
        bool, typer.Option("--local", help="price in-process instead of asking the hub")
    ] = False,
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKeyOpt = None,
    as_json: JsonOut = False,
) -> None:
    """Price a quantity under a plan and show the breakdown per tier."""
    body = {"plan": _read_plan(plan), "quantity": _quantity(quantity)}
    if local:
        charge = _price_locally(body["plan"], body["quantity"])
    else:
        charge = common.call(api_url, api_key, "POST", "/billing/preview", json=body)
    if as_json:
        typer.echo(json.dumps(charge, indent=2, sort_keys=True))
        return
    _show_charge(charge)
