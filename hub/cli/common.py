"""What every ``hub`` command that talks to the REST API shares.

Options (``--api-url`` / ``HUB_API_URL``, ``--api-key`` / ``HUB_API_KEY``,
``--json``, paging), one request helper that prints the server's message and
exits 1 on error, and table output.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any, NoReturn

import httpx
import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

console = Console()
err_console = Console(stderr=True)

ApiUrl = Annotated[
    str, typer.Option("--api-url", envvar="HUB_API_URL", help="hub REST API base URL")
]
ApiKeyOpt = Annotated[
    str | None, typer.Option("--api-key", envvar="HUB_API_KEY", help="API key (hubk_...)")
]
JsonOut = Annotated[bool, typer.Option("--json", help="print JSON instead of a table")]
Limit = Annotated[int, typer.Option(min=1, max=500, help="page size")]
Offset = Annotated[int, typer.Option(min=0, help="items to skip")]
DEFAULT_API_URL = "http://127.0.0.1:8080"


def make_client(api_url: str, api_key: str | None) -> httpx.Client:
    """The HTTP client for one command (tests replace this attribute)."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return httpx.Client(base_url=api_url, headers=headers, timeout=60.0)


def fail(message: str) -> NoReturn:
    """Print ``message`` as an error and exit with status 1."""
    err_console.print(Text("error: ", style="bold red") + Text(message))
    raise typer.Exit(1)


def error_message(response: httpx.Response) -> str:
    """The server's error, as one line."""
    try:
        body = response.json()
    except ValueError:
        return f"{response.status_code}: {response.text[:500]}"
    if isinstance(body, dict):
        message = body.get("message") or body.get("detail") or body
        return f"{response.status_code} {body.get('error', '')}: {message}".replace(" :", ":")
    return f"{response.status_code}: {body}"


def call(api_url: str, api_key: str | None, method: str, path: str, **kwargs: Any) -> Any:
    """Send one API request; print the server's message and exit 1 on error."""
    if not api_key:
        fail("no API key: pass --api-key or set HUB_API_KEY")
    try:
        with make_client(api_url, api_key) as client:
            response = client.request(method, "/api/v1" + path, **kwargs)
    except httpx.HTTPError as exc:
        fail(f"cannot reach the hub at {api_url}: {exc}")
    if response.is_error:
        fail(error_message(response))
    return response.json()


def cell(value: Any) -> Text:
    """One table cell (``-`` for none, lists comma-joined)."""
    if value is None:
        return Text("-", style="dim")
    if isinstance(value, list):
        return Text(", ".join(str(v) for v in value))
    return Text(str(value))


def show(data: Any, columns: list[str], as_json: bool, title: str = "") -> None:
    """Print a page, a list or one object as a table (or JSON)."""
    if as_json:
        typer.echo(json.dumps(data, indent=2, sort_keys=True))
        return
    items = data["items"] if isinstance(data, dict) and "items" in data else data
    rows = items if isinstance(items, list) else [items]
    table = Table(title=title or None)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*(cell(row.get(column)) for column in columns))
    console.print(table)
    if isinstance(data, dict) and "total" in data:
        shown = f"{data['offset'] + 1}-{data['offset'] + len(rows)}" if rows else "0"
        console.print(Text(f"{shown} of {data['total']}", style="dim"))


def iso(value: datetime | None) -> str | None:
    """An ISO 8601 time for the API; naive command-line times count as UTC."""
    # Naive command-line times are taken as UTC, like everything the hub stores.
    if value is None:
        return None
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()


def page_params(limit: int, offset: int, **filters: Any) -> dict[str, Any]:
    """Query parameters for one page, dropping filters that were not given."""
    params: dict[str, Any] = {"limit": limit, "offset": offset}
    params.update({k: v for k, v in filters.items() if v is not None})
    return params


def echo_json(data: Any) -> None:
    """Print ``data`` as indented, key-sorted JSON."""
    typer.echo(json.dumps(data, indent=2, sort_keys=True))
