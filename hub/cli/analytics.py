"""Analytics commands: ``hub analytics <report>``, over the REST API.

Like the other API commands they use ``--api-url`` / ``HUB_API_URL`` and
``--api-key`` / ``HUB_API_KEY`` (a viewer key suffices), print a table, or the
API's JSON with ``--json``, and exit 1 with the server's message on error.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from hub.cli import common
from hub.cli.common import DEFAULT_API_URL, ApiKeyOpt, ApiUrl, JsonOut, Limit, Offset

analytics_app = typer.Typer(help="Fleet analytics over the REST API.", no_args_is_help=True)

_UNUSED_COLUMNS = [
    "account_name",
    "sku",
    "license_model",
    "created_at",
    "days_unused",
    "reason",
    "entitlement_id",
]
_HISTORY_COLUMNS = ["at", "actor", "action", "entitlement_id", "device_id", "reason"]
_STATUSES = ["active", "suspended", "revoked", "expired"]


def _get(api_url: str, api_key: str | None, path: str, **params: Any) -> Any:
    query = {k: v for k, v in params.items() if v is not None}
    return common.call(api_url, api_key, "GET", "/analytics" + path, params=query)


def _table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    common.console.print(table)


def duration(seconds: float | None) -> str:
    """A duration for people: ``45s``, ``12m 3s``, ``3h 2m``, ``2d 4h`` (``-``: none)."""
    if seconds is None:
        return "-"
    whole = round(seconds)
    days, rest = divmod(whole, 86_400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{secs}s"


@analytics_app.command("time-to-activate")
def time_to_activate(
    since: Annotated[
        datetime | None, typer.Option(help="only first activations at or after (UTC)")
    ] = None,
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKeyOpt = None,
    as_json: JsonOut = False,
) -> None:
    """Time from device registration to first activation, per product."""
    data = _get(api_url, api_key, "/time-to-activate", since=since and since.isoformat())
    if as_json:
        common.echo_json(data)
        return
    columns = ["sku", "name", "devices", "min", "p50", "p90", "max", "mean"]
    rows = []
    for product in data["products"]:
        stats = product["seconds"]
        times = [duration(stats[k]) for k in ("min", "p50", "p90", "max", "mean")]
        rows.append([product["sku"], product["name"], str(stats["count"]), *times])
    _table("time to first activation", columns, rows)
    common.console.print(Text(f"percentiles: {data['method']}", style="dim"))


@analytics_app.command("license-models")
def license_models(
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKeyOpt = None,
    as_json: JsonOut = False,
) -> None:
    """Entitlements by license model and status, and devices covered now."""
    data = _get(api_url, api_key, "/license-models")
    if as_json:
        common.echo_json(data)
        return
    rows = [
        [
            m["license_model"],
            str(m["total"]),
            *(str(m["by_status"].get(s, 0)) for s in _STATUSES),
            str(m["devices_covered"]),
        ]
        for m in data["models"]
    ]
    columns = ["license_model", "total", *_STATUSES, "devices_covered"]
    _table("license models", columns, rows)
    common.console.print(Text(f"devices covered: {data['devices_covered']}", style="dim"))


@analytics_app.command("unused-entitlements")
def unused_entitlements(
    idle_days: Annotated[int, typer.Option(min=0, help="floating: days without a seat held")] = 30,
    limit: Limit = 50,
    offset: Offset = 0,
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKeyOpt = None,
    as_json: JsonOut = False,
) -> None:
    """Active entitlements nobody uses (churn risk), longest unused first."""
    data = _get(
        api_url,
        api_key,
        "/unused-entitlements",
        idle_days=idle_days,
        limit=limit,
        offset=offset,
    )
    common.show(data, _UNUSED_COLUMNS, as_json, "unused entitlements")


def _feature_state(state: dict[str, Any]) -> str:
    if not state["enabled"]:
        return "disabled"
    parts = [f"{k}={state[k]}" for k in ("limit", "cap") if state.get(k) is not None]
    return " ".join(["enabled", *parts])


@analytics_app.command("leakage")
def leakage(
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKeyOpt = None,
    as_json: JsonOut = False,
) -> None:
    """Devices whose acknowledged manifest grants more than they are entitled to."""
    data = _get(api_url, api_key, "/leakage")
    if as_json:
        common.echo_json(data)
        return
    columns = ["device_id", "serial", "feature", "kind", "held", "entitled", "seq", "not_after"]
    rows = [
        [
            f["device_id"],
            f["serial"],
            f["feature"],
            f["kind"],
            _feature_state(f["held"]),
            _feature_state(f["entitled"]),
            str(f["manifest_seq"]),
            f["not_after"],
        ]
        for f in data["findings"]
    ]
    if rows:
        _table("leakage", columns, rows)
    _leakage_summary(data)


def _leakage_summary(data: dict[str, Any]) -> None:
    if data["devices"]:
        verdict = Text(f"{data['devices']} device(s) leaking", style="bold red")
    else:
        verdict = Text("no leakage", style="green")
    common.console.print(verdict)
    manifests = data["manifests"]
    waiting = ", ".join(f"{k} {v}" for k, v in manifests["unacknowledged"].items())
    common.console.print(
        Text(
            f"manifests: acknowledged {manifests['acknowledged_current']} checked, "
            f"{manifests['acknowledged_expired']} expired; unacknowledged: {waiting}",
            style="dim",
        )
    )


@analytics_app.command("history")
def entitlement_history(
    account_id: str,
    limit: Limit = 50,
    offset: Offset = 0,
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKeyOpt = None,
    as_json: JsonOut = False,
) -> None:
    """An account's entitlement history, newest first."""
    path = f"/entitlement-history/{account_id}"
    data = _get(api_url, api_key, path, limit=limit, offset=offset)
    common.show(data, _HISTORY_COLUMNS, as_json, "entitlement history")
