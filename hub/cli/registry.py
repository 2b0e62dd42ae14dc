"""Registry commands: products, classes, devices, claim batches, API keys, audit.

They talk to a running hub over its REST API (``--api-url`` / ``HUB_API_URL``,
``--api-key`` / ``HUB_API_KEY``). ``tenant create`` is the exception: it works
on the database directly, because it mints the first API key there is.
Every listing prints a table, or JSON with ``--json``. Errors print the
server's message and exit with status 1.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.text import Text

from hub.cli.common import (
    DEFAULT_API_URL,
    ApiKeyOpt,
    ApiUrl,
    JsonOut,
    Limit,
    Offset,
    call,
    console,
    fail,
    iso,
    show,
)
from hub.db.engine import make_engine, make_session_factory
from hub.db.migrate import upgrade
from hub.errors import HubError
from hub.registry.tenants import create_tenant
from hub.settings import load_settings

registry_app = typer.Typer(help="Registry over the REST API.", no_args_is_help=True)
tenant_app = typer.Typer(help="Tenants (direct database access).", no_args_is_help=True)
products_app = typer.Typer(help="Products.", no_args_is_help=True)
classes_app = typer.Typer(help="Device classes.", no_args_is_help=True)
devices_app = typer.Typer(help="Devices.", no_args_is_help=True)
batches_app = typer.Typer(help="Claim batches.", no_args_is_help=True)
keys_app = typer.Typer(help="API keys.", no_args_is_help=True)
audit_app = typer.Typer(help="Audit log.", no_args_is_help=True)
for _sub, _name in (
    (products_app, "products"),
    (classes_app, "classes"),
    (devices_app, "devices"),
    (batches_app, "claim-batches"),
    (keys_app, "api-keys"),
    (audit_app, "audit"),
):
    registry_app.add_typer(_sub, name=_name)


def _secret_notice(what: str, secret: str) -> None:
    console.print(Text(f"{what} (shown once, store it now):", style="bold yellow"))
    typer.echo(secret)


# ---------------------------------------------------------------- products

_PRODUCT_COLUMNS = ["id", "sku", "name", "description", "created_at"]


@products_app.command("create")
def products_create(
    *,
    sku: Annotated[str, typer.Option(help="stock keeping unit, unique per tenant")],
    name: Annotated[str, typer.Option(help="display name")],
    description: str = "",
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKeyOpt = None,
    as_json: JsonOut = False,
) -> None:
    """Create a product."""
    body = {"sku": sku, "name": name, "description": description}
    show(call(api_url, api_key, "POST", "/products", json=body), _PRODUCT_COLUMNS, as_json)


@products_app.command("list")
def products_list(
    limit: Limit = 50,
    offset: Offset = 0,
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKeyOpt = None,
    as_json: JsonOut = False,
) -> None:
    """List products."""
    data = call(api_url, api_key, "GET", "/products", params={"limit": limit, "offset": offset})
    show(data, _PRODUCT_COLUMNS, as_json, "products")


# ---------------------------------------------------------------- device classes

_CLASS_COLUMNS = ["id", "name", "vendor_id", "class_id", "created_at"]


@classes_app.command("create")
def classes_create(
    *,
    name: Annotated[str, typer.Option(help="display name")],
    vendor_id: Annotated[str, typer.Option(help="SUIT vendor id (UUID)")],
    class_id: Annotated[str, typer.Option(help="SUIT class id (UUID)")],
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKeyOpt = None,
    as_json: JsonOut = False,
) -> None:
    """Create a device class."""
    body = {"name": name, "vendor_id": vendor_id, "class_id": class_id}
    data = call(api_url, api_key, "POST", "/device-classes", json=body)
    show(data, _CLASS_COLUMNS, as_json)


@classes_app.command("list")
def classes_list(
    limit: Limit = 50,
    offset: Offset = 0,
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKeyOpt = None,
    as_json: JsonOut = False,
) -> None:
    """List device classes."""
    params = {"limit": limit, "offset": offset}
    data = call(api_url, api_key, "GET", "/device-classes", params=params)
    show(data, _CLASS_COLUMNS, as_json, "device classes")


# ---------------------------------------------------------------- devices

_DEVICE_COLUMNS = ["id", "serial", "device_class_id", "status", "online", "tags", "last_seen_at"]


@devices_app.command("create")
def devices_create(
    *,
    serial: Annotated[str, typer.Option(help="serial number, unique per tenant")],
    class_id: Annotated[str, typer.Option("--class-id", help="device class id")],
    tag: Annotated[list[str] | None, typer.Option(help="tag (repeatable)")] = None,
    public_key: Annotated[str | None, typer.Option(help="base64 raw Ed25519 key")] = None,
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKeyOpt = None,
    as_json: JsonOut = False,
) -> None:
    """Register a device."""
    body = {"serial": serial, "device_class_id": class_id, "tags": tag or []}
    if public_key:
        body["public_key"] = public_key
    show(call(api_url, api_key, "POST", "/devices", json=body), _DEVICE_COLUMNS, as_json)


@devices_app.command("list")
def devices_list(
    *,
    class_id: Annotated[str | None, typer.Option("--class-id")] = None,
    status: Annotated[str | None, typer.Option(help="registered|claimed|disabled")] = None,
    tag: str | None = None,
    serial_prefix: str | None = None,
    online: Annotated[bool | None, typer.Option("--online/--offline")] = None,
    limit: Limit = 50,
    offset: Offset = 0,
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKeyOpt = None,
    as_json: JsonOut = False,
) -> None:
    """List devices with optional filters."""
    params: dict[str, Any] = {"limit": limit, "offset": offset}
    filters = {
        "device_class_id": class_id,
        "status": status,
        "tag": tag,
        "serial_prefix": serial_prefix,
        "online": online,
    }
    params.update({k: v for k, v in filters.items() if v is not None})
    data = call(api_url, api_key, "GET", "/devices", params=params)
    show(data, _DEVICE_COLUMNS, as_json, "devices")


@devices_app.command("get")
def devices_get(
    device_id: str,
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKeyOpt = None,
    as_json: JsonOut = False,
) -> None:
    """Show one device."""
    data = call(api_url, api_key, "GET", f"/devices/{device_id}")
    show(data, [*_DEVICE_COLUMNS, "public_key_fingerprint", "claimed_at"], as_json)


@devices_app.command("import")
def devices_import(
    csv_file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)],
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKeyOpt = None,
    as_json: JsonOut = False,
) -> None:
    """Import devices from CSV (serial,device_class_id,tags,public_key).

    Exits 1 when any row failed (the good rows are still imported).
    """
    content = csv_file.read_bytes()
    files = {"file": (csv_file.name, content, "text/csv")}
    data = call(api_url, api_key, "POST", "/devices/import", files=files)
    if as_json:
        typer.echo(json.dumps(data, indent=2, sort_keys=True))
    else:
        failed = [row for row in data["rows"] if row["status"] == "error"]
        if failed:
            show(failed, ["line", "serial", "error_code", "message"], False, "failed rows")
        console.print(f"created {data['created']}, failed {data['failed']}")
    if data["failed"]:
        raise typer.Exit(1)


@devices_app.command("reset-claim")
def devices_reset_claim(
    device_id: str,
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKeyOpt = None,
    as_json: JsonOut = False,
) -> None:
    """Delete a device's MQTT credential so it can claim again."""
    data = call(api_url, api_key, "POST", f"/devices/{device_id}/reset-claim")
    show(data, _DEVICE_COLUMNS, as_json)


# ---------------------------------------------------------------- claim batches

_BATCH_COLUMNS = ["id", "name", "device_count", "expires_at", "revoked_at", "created_at"]


def _read_serials(serials: list[str] | None, serials_file: Path | None) -> list[str]:
    found = list(serials or [])
    if serials_file is not None:
        lines = serials_file.read_text(encoding="utf-8").splitlines()
        found.extend(line.strip() for line in lines if line.strip())
    if not found:
        fail("give --serial (repeatable) or --serials-file")
    return found


@batches_app.command("create")
def batches_create(
    *,
    name: Annotated[str, typer.Option(help="batch name")],
    serial: Annotated[list[str] | None, typer.Option(help="device serial (repeatable)")] = None,
    serials_file: Annotated[
        Path | None, typer.Option(exists=True, dir_okay=False, help="one serial per line")
    ] = None,
    ttl_seconds: Annotated[int, typer.Option(min=60, help="token lifetime")] = 7 * 86400,
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKeyOpt = None,
    as_json: JsonOut = False,
) -> None:
    """Create a claim batch and print its token once."""
    body = {
        "name": name,
        "serials": _read_serials(serial, serials_file),
        "ttl_seconds": ttl_seconds,
    }
    data = call(api_url, api_key, "POST", "/claim-batches", json=body)
    if as_json:
        typer.echo(json.dumps(data, indent=2, sort_keys=True))
        return
    show(data, _BATCH_COLUMNS, False)
    _secret_notice("claim token", data["token"])


@batches_app.command("list")
def batches_list(
    limit: Limit = 50,
    offset: Offset = 0,
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKeyOpt = None,
    as_json: JsonOut = False,
) -> None:
    """List claim batches (tokens are never shown again)."""
    params = {"limit": limit, "offset": offset}
    data = call(api_url, api_key, "GET", "/claim-batches", params=params)
    show(data, _BATCH_COLUMNS, as_json, "claim batches")


# ---------------------------------------------------------------- API keys

_KEY_COLUMNS = ["id", "name", "role", "created_at", "last_used_at", "revoked_at"]


@keys_app.command("create")
def keys_create(
    *,
    name: Annotated[str, typer.Option(help="what the key is for")],
    role: Annotated[str, typer.Option(help="admin|operator|viewer")] = "viewer",
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKeyOpt = None,
    as_json: JsonOut = False,
) -> None:
    """Create an API key and print it once (admin)."""
    data = call(api_url, api_key, "POST", "/api-keys", json={"name": name, "role": role})
    if as_json:
        typer.echo(json.dumps(data, indent=2, sort_keys=True))
        return
    show(data, _KEY_COLUMNS, False)
    _secret_notice("API key", data["key"])


@keys_app.command("list")
def keys_list(
    limit: Limit = 50,
    offset: Offset = 0,
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKeyOpt = None,
    as_json: JsonOut = False,
) -> None:
    """List API keys (admin)."""
    data = call(api_url, api_key, "GET", "/api-keys", params={"limit": limit, "offset": offset})
    show(data, _KEY_COLUMNS, as_json, "API keys")


@keys_app.command("revoke")
def keys_revoke(
    key_id: str,
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKeyOpt = None,
    as_json: JsonOut = False,
) -> None:
    """Revoke an API key (admin)."""
    show(call(api_url, api_key, "DELETE", f"/api-keys/{key_id}"), _KEY_COLUMNS, as_json)


# ---------------------------------------------------------------- audit

_AUDIT_COLUMNS = ["id", "at", "actor", "action", "target_type", "target_id", "outcome"]


@audit_app.command("list")
def audit_list(
    *,
    action: str | None = None,
    target_type: str | None = None,
    target_id: str | None = None,
    since: Annotated[datetime | None, typer.Option(help="inclusive, ISO 8601")] = None,
    until: Annotated[datetime | None, typer.Option(help="exclusive, ISO 8601")] = None,
    limit: Limit = 50,
    offset: Offset = 0,
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKeyOpt = None,
    as_json: JsonOut = False,
) -> None:
    """List audit events, newest first."""
    params: dict[str, Any] = {"limit": limit, "offset": offset}
    filters = {
        "action": action,
        "target_type": target_type,
        "target_id": target_id,
        "since": iso(since),
        "until": iso(until),
    }
    params.update({k: v for k, v in filters.items() if v is not None})
    data = call(api_url, api_key, "GET", "/audit", params=params)
    show(data, _AUDIT_COLUMNS, as_json, "audit")


# ---------------------------------------------------------------- tenants


@tenant_app.callback()
def _tenant_group() -> None:
    """Tenants (direct database access)."""
    # A callback keeps ``tenant`` a group even while it has a single command.


@tenant_app.command("create")
def tenant_create(
    name: str,
    database_url: Annotated[
        str | None, typer.Option(help="SQLAlchemy URL (default: from settings)")
    ] = None,
    as_json: JsonOut = False,
) -> None:
    """Create a tenant and print its first admin API key once."""
    settings = load_settings(database_url=database_url)
    if settings.database_url is None:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    url = settings.effective_database_url
    upgrade(url)
    engine = make_engine(url)
    try:
        with make_session_factory(engine)() as session:
            tenant, key = create_tenant(session, name, datetime.now(UTC))
            session.commit()
    except HubError as exc:
        fail(str(exc))
    finally:
        engine.dispose()
    if as_json:
        typer.echo(json.dumps({"tenant_id": tenant.id, "name": tenant.name, "api_key": key}))
        return
    console.print(f"tenant {tenant.name} created: {tenant.id}")
    _secret_notice("admin API key", key)
