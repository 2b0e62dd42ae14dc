"""Billing commands: ``hub billing preview|plans|periods|run|invoices|audit|...``.

Like the other commands, they ask a running hub over its REST API
(``--api-url`` / ``HUB_API_URL``, ``--api-key`` / ``HUB_API_KEY``) and exit 1
with the server's message on error; ``--json`` prints the API's JSON instead
of a table. ``preview --local`` prices in-process (the same pure code the hub
runs; no hub or key needed). ``audit`` exits 1 when any closed period does
not match its raw usage records, listing every difference.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.table import Table
from rich.text import Text

from hub.cli import common
from hub.cli.common import DEFAULT_API_URL, ApiKeyOpt, ApiUrl, JsonOut, Limit, Offset

billing_app = typer.Typer(
    help="Billing: price plans, previews, periods, invoices, audit, webhooks.",
    no_args_is_help=True,
)
plans_app = typer.Typer(help="A product's price plans.", no_args_is_help=True)
invoices_app = typer.Typer(help="Invoices: list, show, export, finalize.", no_args_is_help=True)
webhooks_app = typer.Typer(help="Webhook receivers and their deliveries.", no_args_is_help=True)
billing_app.add_typer(plans_app, name="plans")
billing_app.add_typer(invoices_app, name="invoices")
billing_app.add_typer(webhooks_app, name="webhooks")


@billing_app.callback()
def billing() -> None:
    """Billing: price plans, previews, periods, invoices, audit, webhooks."""


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


# ---------------------------------------------------------------- price plans

_PLAN_COLUMNS = ["id", "meter", "aggregation", "currency", "active_from", "description"]


def _plan_row(plan: dict[str, Any]) -> dict[str, Any]:
    return {**plan, "meter": plan["meter"] or "(recurring fee)"}


@plans_app.command("list")
def plans_list(
    product_id: Annotated[str, typer.Argument(help="product id")],
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKeyOpt = None,
    as_json: JsonOut = False,
    limit: Limit = 50,
    offset: Offset = 0,
) -> None:
    """List a product's price plans."""
    data = common.call(
        api_url, api_key, "GET", f"/products/{product_id}/price-plans",
        params=common.page_params(limit, offset),
    )  # fmt: skip
    if not as_json:
        data = {**data, "items": [_plan_row(p) for p in data["items"]]}
    common.show(data, _PLAN_COLUMNS, as_json, title="price plans")


@plans_app.command("create")
def plans_create(
    product_id: Annotated[str, typer.Argument(help="product id")],
    plan: Annotated[str, typer.Argument(help="plan JSON: a file path, '-' for stdin, or inline")],
    meter: Annotated[
        str | None, typer.Option(help="metered feature key; omit for the recurring fee")
    ] = None,
    aggregation: Annotated[
        str, typer.Option(help="sum | count | max | unique_count | latest")
    ] = "sum",
    active_from: Annotated[
        datetime | None, typer.Option(help="in force from (UTC); default now")
    ] = None,
    description: Annotated[str, typer.Option(help="free text")] = "",
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKeyOpt = None,
    as_json: JsonOut = False,
) -> None:
    """Attach a price plan to a product (operator role)."""
    body: dict[str, Any] = {
        "meter": meter,
        "aggregation": aggregation,
        "plan": _read_plan(plan),
        "description": description,
    }
    if active_from is not None:
        body["active_from"] = common.iso(active_from)
    data = common.call(api_url, api_key, "POST", f"/products/{product_id}/price-plans", json=body)
    common.show(data if as_json else _plan_row(data), _PLAN_COLUMNS, as_json)


@plans_app.command("show")
def plans_show(
    product_id: Annotated[str, typer.Argument(help="product id")],
    plan_id: Annotated[str, typer.Argument(help="price plan id")],
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKeyOpt = None,
) -> None:
    """Show one price plan as JSON."""
    common.echo_json(
        common.call(api_url, api_key, "GET", f"/products/{product_id}/price-plans/{plan_id}")
    )


@plans_app.command("update")
def plans_update(
    product_id: Annotated[str, typer.Argument(help="product id")],
    plan_id: Annotated[str, typer.Argument(help="price plan id")],
    plan: Annotated[str | None, typer.Option(help="new plan JSON (path, '-' or inline)")] = None,
    aggregation: Annotated[str | None, typer.Option(help="new aggregation")] = None,
    active_from: Annotated[datetime | None, typer.Option(help="new start (UTC)")] = None,
    description: Annotated[str | None, typer.Option(help="new description")] = None,
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKeyOpt = None,
    as_json: JsonOut = False,
) -> None:
    """Change a plan no invoice has used yet."""
    body: dict[str, Any] = {}
    if plan is not None:
        body["plan"] = _read_plan(plan)
    if aggregation is not None:
        body["aggregation"] = aggregation
    if active_from is not None:
        body["active_from"] = common.iso(active_from)
    if description is not None:
        body["description"] = description
    data = common.call(
        api_url, api_key, "PATCH", f"/products/{product_id}/price-plans/{plan_id}", json=body
    )
    common.show(data if as_json else _plan_row(data), _PLAN_COLUMNS, as_json)


@plans_app.command("delete")
def plans_delete(
    product_id: Annotated[str, typer.Argument(help="product id")],
    plan_id: Annotated[str, typer.Argument(help="price plan id")],
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKeyOpt = None,
) -> None:
    """Delete a plan no invoice has used yet."""
    _request(api_url, api_key, "DELETE", f"/products/{product_id}/price-plans/{plan_id}")
    typer.echo(f"deleted price plan {plan_id}")


# ---------------------------------------------------------------- raw requests


def _request(api_url: str, api_key: str | None, method: str, path: str, **params: Any) -> str:
    """One request whose answer is not JSON (exports, 204s); exits 1 on error."""
    if not api_key:
        common.fail("no API key: pass --api-key or set HUB_API_KEY")
    query = {k: v for k, v in params.items() if v is not None}
    try:
        with common.make_client(api_url, api_key) as client:
            response = client.request(method, "/api/v1" + path, params=query)
    except httpx.HTTPError as exc:
        common.fail(f"cannot reach the hub at {api_url}: {exc}")
    if response.is_error:
        common.fail(common.error_message(response))
    return response.text


# ---------------------------------------------------------------- periods, run


@billing_app.command("periods")
def periods(
    account_id: Annotated[str | None, typer.Option(help="only this account")] = None,
    status: Annotated[str | None, typer.Option(help="open | closing | closed")] = None,
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKeyOpt = None,
    as_json: JsonOut = False,
    limit: Limit = 50,
    offset: Offset = 0,
) -> None:
    """List billing periods."""
    data = common.call(
        api_url, api_key, "GET", "/billing/periods",
        params=common.page_params(limit, offset, account_id=account_id, status=status),
    )  # fmt: skip
    columns = ["id", "account_id", "seq", "starts_at", "ends_at", "status", "cutoff"]
    common.show(data, columns, as_json, title="billing periods")


@billing_app.command("run")
def run(
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKeyOpt = None,
    as_json: JsonOut = False,
) -> None:
    """Run the period job now: open, close and invoice what is due (admin role)."""
    data = common.call(api_url, api_key, "POST", "/billing/run")
    if as_json:
        common.echo_json(data)
        return
    typer.echo(
        f"opened {data['opened']}, closing {data['closing']}, "
        f"closed {len(data['closed_periods'])}, invoices {len(data['invoices'])}, "
        f"failed {len(data['failed'])}"
    )


# ---------------------------------------------------------------- invoices

_INVOICE_COLUMNS = [
    "number", "id", "status", "account_id", "period_start", "currency", "total_decimal",
]  # fmt: skip
_LINE_TABLE = ["position", "kind", "period_start", "meter", "quantity", "amount_decimal"]


def _invoice_filters(
    status: str | None, account_id: str | None, since: datetime | None, until: datetime | None
) -> dict[str, Any]:
    return {
        "status": status,
        "account_id": account_id,
        "since": common.iso(since),
        "until": common.iso(until),
    }


StatusOpt = Annotated[str | None, typer.Option(help="draft | finalized")]
AccountOpt = Annotated[str | None, typer.Option(help="only this account")]
SinceOpt = Annotated[datetime | None, typer.Option(help="periods starting at or after (UTC)")]
UntilOpt = Annotated[datetime | None, typer.Option(help="periods starting before (UTC)")]


@invoices_app.command("list")
def invoices_list(
    status: StatusOpt = None,
    account_id: AccountOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKeyOpt = None,
    as_json: JsonOut = False,
    limit: Limit = 50,
    offset: Offset = 0,
) -> None:
    """List invoices, oldest first."""
    params = common.page_params(limit, offset, **_invoice_filters(status, account_id, since, until))
    data = common.call(api_url, api_key, "GET", "/invoices", params=params)
    common.show(data, _INVOICE_COLUMNS, as_json, title="invoices")


@invoices_app.command("show")
def invoices_show(
    invoice_id: Annotated[str, typer.Argument(help="invoice id")],
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKeyOpt = None,
    as_json: JsonOut = False,
) -> None:
    """Show one invoice with its lines."""
    data = common.call(api_url, api_key, "GET", f"/invoices/{invoice_id}")
    if as_json:
        common.echo_json(data)
        return
    title = f"invoice {data['number'] or data['id']} ({data['status']})"
    common.show(data["lines"], _LINE_TABLE, False, title=title)
    common.console.print(
        Text(
            f"subtotal {data['subtotal']}, adjustments {data['adjustments']}, "
            f"total: {data['total_decimal']} {data['currency']}",
            style="bold",
        )
    )


@invoices_app.command("export")
def invoices_export(
    invoice_id: Annotated[
        str | None, typer.Argument(help="one invoice; omit for every matching invoice")
    ] = None,
    fmt: Annotated[str, typer.Option("--format", help="csv | json")] = "csv",
    out: Annotated[Path | None, typer.Option(help="write to this file instead of stdout")] = None,
    status: StatusOpt = None,
    account_id: AccountOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKeyOpt = None,
) -> None:
    """Export invoices as CSV (one row per line) or JSON."""
    if fmt not in ("csv", "json"):
        common.fail("--format must be csv or json")
    if invoice_id is not None:
        text = _request(api_url, api_key, "GET", f"/invoices/{invoice_id}", format=fmt)
    else:
        filters = _invoice_filters(status, account_id, since, until)
        text = _request(api_url, api_key, "GET", "/invoices", format=fmt, **filters)
    if out is None:
        typer.echo(text, nl=False)
        return
    out.write_text(text, encoding="utf-8")
    typer.echo(f"wrote {out}", err=True)


@invoices_app.command("finalize")
def invoices_finalize(
    invoice_id: Annotated[str, typer.Argument(help="draft invoice id")],
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKeyOpt = None,
    as_json: JsonOut = False,
) -> None:
    """Finalize a draft invoice (numbers it; sends invoice.finalized)."""
    data = common.call(api_url, api_key, "POST", f"/invoices/{invoice_id}/finalize")
    common.show(data, _INVOICE_COLUMNS, as_json)


# ---------------------------------------------------------------- audit, leakage


def _difference(diff: dict[str, Any]) -> str:
    """One audit difference on one line."""
    where = [f"period {diff['period_id']}", f"account {diff['account_id']}"]
    if diff["invoice_id"]:
        where.append(f"invoice {diff['invoice_number'] or diff['invoice_id']}")
    if diff["position"] is not None:
        where.append(f"line {diff['position']}")
    if diff["meter"]:
        where.append(f"meter {diff['meter']}")
    return (
        f"DIFFERENCE {diff['check']}: {', '.join(where)}: "
        f"expected {diff['expected']}, stored {diff['stored']}"
    )


@billing_app.command("audit")
def audit(
    account_id: AccountOpt = None,
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKeyOpt = None,
    as_json: JsonOut = False,
) -> None:
    """Recompute every closed period from the raw usage records; exit 1 on any difference."""
    data = common.call(
        api_url,
        api_key,
        "GET",
        "/billing/audit",
        params={"account_id": account_id} if account_id else {},
    )
    if as_json:
        common.echo_json(data)
    else:
        summary = (
            f"{data['periods']} closed period(s), {data['invoices']} invoice(s), "
            f"{data['lines']} line(s), {data['records']} usage record(s) checked"
        )
        common.console.print(summary)
        if data["pending"]:
            waiting = sum(p["records"] for p in data["pending"])
            common.console.print(f"{waiting} late record(s) pending for the next invoices")
        for diff in data["differences"]:
            common.err_console.print(Text(_difference(diff), style="red"), soft_wrap=True)
    if not data["ok"]:
        common.fail(f"{len(data['differences'])} difference(s) between invoices and usage")
    if not as_json:
        common.console.print(
            Text("ok: every closed period matches its usage records", style="green")
        )


@billing_app.command("leakage")
def leakage(
    period_id: Annotated[str | None, typer.Option(help="a billing period")] = None,
    since: Annotated[datetime | None, typer.Option(help="window start (UTC)")] = None,
    until: Annotated[datetime | None, typer.Option(help="window end (UTC)")] = None,
    account_id: AccountOpt = None,
    meter: Annotated[str | None, typer.Option(help="one metered feature")] = None,
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKeyOpt = None,
    as_json: JsonOut = False,
) -> None:
    """Usage no invoice charges for: uncovered, over cap, unpriced."""
    params = {
        "period_id": period_id, "since": common.iso(since), "until": common.iso(until),
        "account_id": account_id, "meter": meter,
    }  # fmt: skip
    data = common.call(
        api_url, api_key, "GET", "/billing/leakage",
        params={k: v for k, v in params.items() if v is not None},
    )  # fmt: skip
    columns = ["kind", "account_id", "device_id", "meter", "quantity", "records"]
    common.show(data, columns, as_json, title="revenue leakage")


# ---------------------------------------------------------------- events, webhooks


@billing_app.command("events")
def events(
    event_type: Annotated[str | None, typer.Option("--type", help="one event type")] = None,
    after_id: Annotated[int | None, typer.Option(help="only events after this id")] = None,
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKeyOpt = None,
    as_json: JsonOut = False,
    limit: Limit = 50,
    offset: Offset = 0,
) -> None:
    """The event log, oldest first."""
    params = common.page_params(limit, offset, type=event_type, after_id=after_id)
    data = common.call(api_url, api_key, "GET", "/events", params=params)
    common.show(data, ["id", "type", "occurred_at", "payload"], as_json, title="events")


_HOOK_COLUMNS = ["id", "url", "event_types", "created_at"]


@webhooks_app.command("list")
def webhooks_list(
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKeyOpt = None,
    as_json: JsonOut = False,
) -> None:
    """List webhook receivers (never their secrets)."""
    data = common.call(api_url, api_key, "GET", "/webhooks")
    common.show(data, _HOOK_COLUMNS, as_json, title="webhooks")


@webhooks_app.command("create")
def webhooks_create(
    url: Annotated[str, typer.Argument(help="the receiver's http(s) URL")],
    event: Annotated[
        list[str],
        typer.Option(
            help="invoice.finalized | usage.threshold_reached | entitlement.expiring (repeat)"
        ),
    ],
    description: Annotated[str, typer.Option(help="free text")] = "",
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKeyOpt = None,
) -> None:
    """Register a receiver; prints its signing secret once (admin role)."""
    body = {"url": url, "event_types": event, "description": description}
    data = common.call(api_url, api_key, "POST", "/webhooks", json=body)
    common.echo_json(data)
    typer.echo("store the secret now: it is not shown again", err=True)


@webhooks_app.command("rotate")
def webhooks_rotate(
    webhook_id: Annotated[str, typer.Argument(help="webhook id")],
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKeyOpt = None,
) -> None:
    """Replace a receiver's secret; prints the new one once."""
    common.echo_json(common.call(api_url, api_key, "POST", f"/webhooks/{webhook_id}/rotate-secret"))


@webhooks_app.command("delete")
def webhooks_delete(
    webhook_id: Annotated[str, typer.Argument(help="webhook id")],
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKeyOpt = None,
) -> None:
    """Remove a receiver and its pending deliveries."""
    _request(api_url, api_key, "DELETE", f"/webhooks/{webhook_id}")
    typer.echo(f"deleted webhook {webhook_id}")


@webhooks_app.command("deliveries")
def webhooks_deliveries(
    webhook_id: Annotated[str, typer.Argument(help="webhook id")],
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKeyOpt = None,
    as_json: JsonOut = False,
    limit: Limit = 50,
    offset: Offset = 0,
) -> None:
    """A receiver's deliveries, newest first."""
    data = common.call(
        api_url, api_key, "GET", f"/webhooks/{webhook_id}/deliveries",
        params=common.page_params(limit, offset),
    )  # fmt: skip
    columns = ["id", "event_id", "status", "attempts", "response_status", "next_attempt_at"]
    common.show(data, columns, as_json, title="deliveries")
