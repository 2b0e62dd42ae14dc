"""``hub usage``: usage totals, records, exports, gaps, conflicts, quarantine, meters.

Like the other API commands they use ``--api-url`` / ``HUB_API_URL`` and
``--api-key`` / ``HUB_API_KEY`` (a viewer key reads; creating a meter needs
an operator), print a table or the API's JSON with ``--json``, and exit 1
with the server's message on error. Times without a zone are UTC; an omitted
window is the current UTC month. ``export`` streams the records to a file
(written atomically) or to standard output with ``--out -``.
"""

from __future__ import annotations

import os
import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.text import Text

from hub.cli import common
from hub.cli.common import DEFAULT_API_URL, ApiKeyOpt, ApiUrl, JsonOut, Limit, Offset

usage_app = typer.Typer(help="Usage: records, meters, exports.", no_args_is_help=True)
meters_app = typer.Typer(help="Billable metrics over metered features.", no_args_is_help=True)
usage_app.add_typer(meters_app, name="meters")

Start = Annotated[datetime | None, typer.Option(help="window start (UTC); default: this month")]
End = Annotated[datetime | None, typer.Option(help="window end, exclusive (UTC)")]
By = Annotated[str, typer.Option(help="window on 'recorded' (device time) or 'received'")]
Account = Annotated[str | None, typer.Option("--account-id", help="only this account")]
DeviceOpt = Annotated[str | None, typer.Option("--device-id", help="only this device")]
MeterOpt = Annotated[str | None, typer.Option("--meter", help="only this metered feature key")]
GroupBy = Annotated[
    str | None,
    typer.Option(
        "--group-by",
        help="comma-separated keys: account_id, meter, device_id, product_id, "
        "entitlement_id, dimension, day, month ('' for one total)",
    ),
]

_RECORD_COLUMNS = [
    "recorded_at", "device_id", "boot_epoch", "seq", "meter", "quantity", "dimension",
    "account_id", "over_cap",
]  # fmt: skip


def _window(start: datetime | None, end: datetime | None, by: str) -> dict[str, Any]:
    return {"start": common.iso(start), "end": common.iso(end), "by": by}


def _get(api_url: str, api_key: str | None, path: str, **params: Any) -> Any:
    query = {k: v for k, v in params.items() if v is not None}
    return common.call(api_url, api_key, "GET", path, params=query)


def _totals_table(data: dict[str, Any], title: str) -> None:
    keys = list(data["group_by"])
    rows = [
        {**item["keys"], "value": item["value"], "records": item["records"]}
        for item in data["items"]
    ]
    common.show(rows, [*keys, "value", "records"], False, title)


@usage_app.command("totals")
def totals(
    start: Start = None,
    end: End = None,
    by: By = "recorded",
    account_id: Account = None,
    device_id: DeviceOpt = None,
    meter: MeterOpt = None,
    group_by: GroupBy = None,
    aggregation: Annotated[
        str, typer.Option(help="sum, count, max, unique_count or latest")
    ] = "sum",
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKeyOpt = None,
    as_json: JsonOut = False,
) -> None:
    """Usage per group (default: per account and meter) in a window."""
    data = _get(
        api_url, api_key, "/usage", **_window(start, end, by), account_id=account_id,
        device_id=device_id, meter=meter, group_by=group_by, aggregation=aggregation,
    )  # fmt: skip
    if as_json:
        common.echo_json(data)
        return
    _totals_table(data, f"usage ({data['aggregation']}) {data['start']} .. {data['end']}")


@usage_app.command("records")
def records(
    start: Start = None,
    end: End = None,
    by: By = "recorded",
    account_id: Account = None,
    device_id: DeviceOpt = None,
    meter: MeterOpt = None,
    limit: Limit = 50,
    offset: Offset = 0,
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKeyOpt = None,
    as_json: JsonOut = False,
) -> None:
    """Stored usage records in time order, one page."""
    data = _get(
        api_url, api_key, "/usage/records", **_window(start, end, by), account_id=account_id,
        device_id=device_id, meter=meter, limit=limit, offset=offset,
    )  # fmt: skip
    common.show(data, _RECORD_COLUMNS, as_json, "usage records")


@usage_app.command("export")
def export(
    out: Annotated[str, typer.Option("--out", help="file to write, or '-' for stdout")],
    fmt: Annotated[str, typer.Option("--format", help="csv or json")] = "csv",
    start: Start = None,
    end: End = None,
    by: By = "recorded",
    account_id: Account = None,
    device_id: DeviceOpt = None,
    meter: MeterOpt = None,
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKeyOpt = None,
) -> None:
    """Every matching record as CSV or JSON, streamed to a file."""
    if fmt not in ("csv", "json"):
        common.fail("--format must be csv or json")
    if not api_key:
        common.fail("no API key: pass --api-key or set HUB_API_KEY")
    params = {
        k: v
        for k, v in {**_window(start, end, by), "account_id": account_id,
                     "device_id": device_id, "meter": meter, "format": fmt}.items()
        if v is not None
    }  # fmt: skip
    written = _stream(api_url, api_key, params, out)
    if out != "-":
        common.err_console.print(Text(f"wrote {written:,} bytes to {out}", style="dim"))


def _stream(api_url: str, api_key: str, params: dict[str, Any], out: str) -> int:
    """GET the export and copy it to ``out`` (a temp file renamed at the end)."""
    target = None if out == "-" else Path(out)
    tmp = None if target is None else target.with_name(f".{target.name}.{os.getpid()}.tmp")
    written = 0
    try:
        with (
            common.make_client(api_url, api_key) as client,
            client.stream("GET", "/api/v1/usage/export", params=params) as response,
        ):
            if response.is_error:
                response.read()
                common.fail(common.error_message(response))
            sink = sys.stdout.buffer if tmp is None else tmp.open("wb")
            try:
                for chunk in response.iter_bytes():
                    sink.write(chunk)
                    written += len(chunk)
            finally:
                if tmp is not None:
                    sink.close()
    except httpx.HTTPError as exc:
        _discard(tmp)
        common.fail(f"cannot reach the hub at {api_url}: {exc}")
    except BaseException:
        _discard(tmp)
        raise
    if tmp is not None and target is not None:
        tmp.replace(target)
    return written


def _discard(tmp: Path | None) -> None:
    if tmp is not None:
        tmp.unlink(missing_ok=True)


@usage_app.command("leakage")
def leakage(
    start: Start = None,
    end: End = None,
    by: By = "recorded",
    device_id: DeviceOpt = None,
    meter: MeterOpt = None,
    group_by: GroupBy = None,
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKeyOpt = None,
    as_json: JsonOut = False,
) -> None:
    """Usage no entitlement covers, and usage over its cap."""
    data = _get(
        api_url, api_key, "/usage/leakage", **_window(start, end, by), device_id=device_id,
        meter=meter, group_by=group_by,
    )  # fmt: skip
    if as_json:
        common.echo_json(data)
        return
    for part, title in (("uncovered", "without an entitlement"), ("over_cap", "over the cap")):
        _totals_table({"group_by": data["group_by"], "items": data[part]}, f"usage {title}")
    common.console.print(
        Text(
            f"uncovered {data['uncovered_total']}, over cap {data['over_cap_total']}",
            style="bold red" if data["uncovered"] or data["over_cap"] else "green",
        )
    )


def _side_command(name: str, path: str, columns: list[str], doc: str) -> None:
    def command(
        device_id: DeviceOpt = None,
        limit: Limit = 50,
        offset: Offset = 0,
        api_url: ApiUrl = DEFAULT_API_URL,
        api_key: ApiKeyOpt = None,
        as_json: JsonOut = False,
    ) -> None:
        data = _get(api_url, api_key, path, device_id=device_id, limit=limit, offset=offset)
        common.show(data, columns, as_json, name)

    command.__doc__ = doc
    usage_app.command(name)(command)


_side_command(
    "conflicts",
    "/usage/conflicts",
    [
        "received_at",
        "device_id",
        "boot_epoch",
        "seq",
        "meter",
        "quantity",
        "dimension",
        "recorded_at",
    ],
    "Records offered under a stored key with different content (not billed).",
)
_side_command(
    "quarantine",
    "/usage/quarantine",
    ["received_at", "device_id", "boot_epoch", "seq", "meter", "quantity", "recorded_at", "reason"],
    "Records outside the clock-skew window (kept, counted, never billed).",
)
_side_command(
    "rejections",
    "/usage/rejections",
    ["received_at", "device_id", "boot_epoch", "seq", "reason"],
    "Records refused as invalid.",
)


@usage_app.command("gaps")
def gaps(
    device_id: DeviceOpt = None,
    open_only: Annotated[bool, typer.Option("--open", help="only gaps not yet filled")] = False,
    limit: Limit = 50,
    offset: Offset = 0,
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKeyOpt = None,
    as_json: JsonOut = False,
) -> None:
    """Runs of sequences never received: possible lost usage."""
    data = _get(
        api_url, api_key, "/usage/gaps", device_id=device_id, open=open_only or None,
        limit=limit, offset=offset,
    )  # fmt: skip
    columns = [
        "detected_at", "device_id", "boot_epoch", "first_missing_seq", "last_missing_seq",
        "missing", "closed_at",
    ]  # fmt: skip
    common.show(data, columns, as_json, "usage gaps")


# ---------------------------------------------------------------- meters

_METER_COLUMNS = ["name", "feature_key", "aggregation", "description", "id"]


@meters_app.command("create")
def create_meter(
    name: Annotated[str, typer.Option(help="unique per tenant: letters, digits, . _ -")],
    feature_key: Annotated[str, typer.Option("--feature-key", help="a metered feature's key")],
    aggregation: Annotated[str, typer.Option(help="sum, count, max, unique_count or latest")],
    description: Annotated[str, typer.Option(help="free text")] = "",
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKeyOpt = None,
    as_json: JsonOut = False,
) -> None:
    """Define a billable metric."""
    body = {"name": name, "feature_key": feature_key, "aggregation": aggregation,
            "description": description}  # fmt: skip
    data = common.call(api_url, api_key, "POST", "/meters", json=body)
    common.show(data, _METER_COLUMNS, as_json, "meter created")


@meters_app.command("list")
def list_meters(
    limit: Limit = 50,
    offset: Offset = 0,
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKeyOpt = None,
    as_json: JsonOut = False,
) -> None:
    """The tenant's meters."""
    data = _get(api_url, api_key, "/meters", limit=limit, offset=offset)
    common.show(data, _METER_COLUMNS, as_json, "meters")


@meters_app.command("value")
def meter_value(
    meter: Annotated[str, typer.Argument(help="meter id or name")],
    start: Start = None,
    end: End = None,
    by: By = "recorded",
    account_id: Account = None,
    device_id: DeviceOpt = None,
    group_by: GroupBy = None,
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKeyOpt = None,
    as_json: JsonOut = False,
) -> None:
    """A meter's value per group (default: per account) in a window."""
    data = _get(
        api_url, api_key, f"/meters/{meter}/value", **_window(start, end, by),
        account_id=account_id, device_id=device_id, group_by=group_by,
    )  # fmt: skip
    if as_json:
        common.echo_json(data)
        return
    title = (
        f"{data['meter']['name']} ({data['meter']['aggregation']}) {data['start']} .. {data['end']}"
    )
    _totals_table(data, title)
