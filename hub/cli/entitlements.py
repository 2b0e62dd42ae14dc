"""Entitlement commands: accounts, features, entitlements, activations.

Like the registry commands they talk to a running hub over its REST API
(``--api-url`` / ``HUB_API_URL``, ``--api-key`` / ``HUB_API_KEY``), print a
table or JSON with ``--json``, and exit 1 with the server's message on error.
Actions that change devices' rights also print the affected device ids.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any

import typer
from rich.text import Text

from hub.cli import common
from hub.cli.common import DEFAULT_API_URL, ApiKeyOpt, ApiUrl, JsonOut, Limit, Offset

entitlements_app = typer.Typer(help="Entitlements over the REST API.", no_args_is_help=True)
accounts_app = typer.Typer(help="Customer accounts.", no_args_is_help=True)
features_app = typer.Typer(help="Product features.", no_args_is_help=True)
grants_app = typer.Typer(help="Entitlements and their lifecycle.", no_args_is_help=True)
activations_app = typer.Typer(help="Activations of entitlements on devices.", no_args_is_help=True)
for _sub, _name in (
    (accounts_app, "accounts"),
    (features_app, "features"),
    (grants_app, "entitlements"),
    (activations_app, "activations"),
):
    entitlements_app.add_typer(_sub, name=_name)

Reason = Annotated[str, typer.Option(help="why (kept in the history)")]
_ACCOUNT_COLUMNS = ["id", "name", "external_ref", "created_at"]
_FEATURE_COLUMNS = ["id", "key", "kind", "default_limit", "cap_per_period", "period", "overage"]
_ENT_COLUMNS = [
    "id",
    "account_id",
    "product_id",
    "license_model",
    "quantity",
    "status",
    "starts_at",
    "ends_at",
]
_ACTIVATION_COLUMNS = ["device_id", "activated_at", "deactivated_at", "temporary_until"]
_HISTORY_COLUMNS = ["at", "actor", "action", "entitlement_id", "device_id", "reason"]


def _show_change(data: dict[str, Any], key: str, columns: list[str], as_json: bool) -> None:
    """Print an action's result and the devices whose rights changed."""
    if as_json:
        common.echo_json(data)
        return
    common.show(data[key], columns, False)
    devices = ", ".join(data["affected_device_ids"]) or "none"
    common.console.print(Text(f"affected devices: {devices}", style="dim"))


# ---------------------------------------------------------------- accounts


@accounts_app.command("create")
def accounts_create(
    *,
    name: Annotated[str, typer.Option(help="account name, unique per tenant")],
    external_ref: Annotated[str | None, typer.Option(help="CRM/billing reference")] = None,
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKeyOpt = None,
    as_json: JsonOut = False,
) -> None:
    """Create a customer account."""
    body = {"name": name, "external_ref": external_ref}
    common.show(
        common.call(api_url, api_key, "POST", "/accounts", json=body), _ACCOUNT_COLUMNS, as_json
    )


@accounts_app.command("list")
def accounts_list(
    limit: Limit = 50,
    offset: Offset = 0,
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKeyOpt = None,
    as_json: JsonOut = False,
) -> None:
    """List customer accounts."""
    data = common.call(
        api_url, api_key, "GET", "/accounts", params=common.page_params(limit, offset)
    )
    common.show(data, _ACCOUNT_COLUMNS, as_json, "accounts")


@accounts_app.command("history")
def accounts_history(
    account_id: str,
    limit: Limit = 50,
    offset: Offset = 0,
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKeyOpt = None,
    as_json: JsonOut = False,
) -> None:
    """An account's entitlement history, newest first."""
    path = f"/accounts/{account_id}/history"
    data = common.call(api_url, api_key, "GET", path, params=common.page_params(limit, offset))
    common.show(data, _HISTORY_COLUMNS, as_json, "history")


# ---------------------------------------------------------------- features


@features_app.command("create")
def features_create(
    *,
    product_id: Annotated[str, typer.Option(help="product id")],
    key: Annotated[str, typer.Option(help="feature key, unique per product")],
    kind: Annotated[str, typer.Option(help="flag|limit|metered")] = "flag",
    default_limit: Annotated[int | None, typer.Option(help="limit features")] = None,
    cap: Annotated[int | None, typer.Option(help="metered: cap per period")] = None,
    period: Annotated[str | None, typer.Option(help="metered: day|month")] = None,
    overage: Annotated[str | None, typer.Option(help="metered: block|allow|flag")] = None,
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKeyOpt = None,
    as_json: JsonOut = False,
) -> None:
    """Add a feature to a product."""
    body = {"key": key, "kind": kind, "default_limit": default_limit}
    body |= {"cap_per_period": cap, "period": period, "overage": overage}
    path = f"/products/{product_id}/features"
    data = common.call(
        api_url, api_key, "POST", path, json={k: v for k, v in body.items() if v is not None}
    )
    common.show(data, _FEATURE_COLUMNS, as_json)


@features_app.command("list")
def features_list(
    product_id: str,
    limit: Limit = 50,
    offset: Offset = 0,
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKeyOpt = None,
    as_json: JsonOut = False,
) -> None:
    """List a product's features."""
    path = f"/products/{product_id}/features"
    data = common.call(api_url, api_key, "GET", path, params=common.page_params(limit, offset))
    common.show(data, _FEATURE_COLUMNS, as_json, "features")


# ---------------------------------------------------------------- entitlements


@grants_app.command("create")
def entitlements_create(
    *,
    account_id: Annotated[str, typer.Option(help="customer account id")],
    product_id: Annotated[str, typer.Option(help="product id")],
    model: Annotated[
        str,
        typer.Option("--model", help="perpetual|subscription|trial|node_locked|floating|metered"),
    ],
    quantity: Annotated[int, typer.Option(help="devices, or seats for floating")] = 1,
    starts_at: Annotated[datetime | None, typer.Option(help="ISO 8601 (default now)")] = None,
    ends_at: Annotated[datetime | None, typer.Option(help="ISO 8601")] = None,
    grace_seconds: Annotated[int, typer.Option(min=0)] = 0,
    overrides: Annotated[
        str | None, typer.Option(help='JSON, e.g. {"users": {"limit": 10}}')
    ] = None,
    reason: Reason = "",
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKeyOpt = None,
    as_json: JsonOut = False,
) -> None:
    """Grant a product to an account."""
    body: dict[str, Any] = {
        "account_id": account_id,
        "product_id": product_id,
        "license_model": model,
        "quantity": quantity,
        "grace_seconds": grace_seconds,
        "reason": reason,
    }
    if starts_at is not None:
        body["starts_at"] = common.iso(starts_at)
    if ends_at is not None:
        body["ends_at"] = common.iso(ends_at)
    if overrides:
        try:
            body["feature_overrides"] = json.loads(overrides)
        except ValueError as exc:
            common.fail(f"--overrides is not JSON: {exc}")
    common.show(
        common.call(api_url, api_key, "POST", "/entitlements", json=body), _ENT_COLUMNS, as_json
    )


@grants_app.command("list")
def entitlements_list(
    *,
    account_id: str | None = None,
    product_id: str | None = None,
    status: Annotated[str | None, typer.Option(help="active|suspended|revoked|expired")] = None,
    model: Annotated[str | None, typer.Option("--model", help="license model")] = None,
    limit: Limit = 50,
    offset: Offset = 0,
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKeyOpt = None,
    as_json: JsonOut = False,
) -> None:
    """List entitlements with optional filters."""
    params = common.page_params(
        limit,
        offset,
        account_id=account_id,
        product_id=product_id,
        status=status,
        license_model=model,
    )
    data = common.call(api_url, api_key, "GET", "/entitlements", params=params)
    common.show(data, _ENT_COLUMNS, as_json, "entitlements")


@grants_app.command("get")
def entitlements_get(
    entitlement_id: str,
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKeyOpt = None,
    as_json: JsonOut = False,
) -> None:
    """Show one entitlement."""
    data = common.call(api_url, api_key, "GET", f"/entitlements/{entitlement_id}")
    common.show(data, [*_ENT_COLUMNS, "grace_seconds", "feature_overrides"], as_json)


def _action(
    api_url: str, api_key: str | None, entitlement_id: str, action: str, body: dict[str, Any]
) -> Any:
    return common.call(
        api_url, api_key, "POST", f"/entitlements/{entitlement_id}/{action}", json=body
    )


@grants_app.command("suspend")
def entitlements_suspend(
    entitlement_id: str,
    reason: Reason = "",
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKeyOpt = None,
    as_json: JsonOut = False,
) -> None:
    """Suspend an active entitlement."""
    data = _action(api_url, api_key, entitlement_id, "suspend", {"reason": reason})
    _show_change(data, "entitlement", _ENT_COLUMNS, as_json)


@grants_app.command("resume")
def entitlements_resume(
    entitlement_id: str,
    reason: Reason = "",
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKeyOpt = None,
    as_json: JsonOut = False,
) -> None:
    """Resume a suspended entitlement."""
    data = _action(api_url, api_key, entitlement_id, "resume", {"reason": reason})
    _show_change(data, "entitlement", _ENT_COLUMNS, as_json)


@grants_app.command("revoke")
def entitlements_revoke(
    entitlement_id: str,
    reason: Reason = "",
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKeyOpt = None,
    as_json: JsonOut = False,
) -> None:
    """Revoke an entitlement for good."""
    data = _action(api_url, api_key, entitlement_id, "revoke", {"reason": reason})
    _show_change(data, "entitlement", _ENT_COLUMNS, as_json)


@grants_app.command("renew")
def entitlements_renew(
    entitlement_id: str,
    *,
    ends_at: Annotated[datetime | None, typer.Option(help="new end, ISO 8601")] = None,
    term_seconds: Annotated[int | None, typer.Option(min=1, help="add this much")] = None,
    reason: Reason = "",
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKeyOpt = None,
    as_json: JsonOut = False,
) -> None:
    """Extend the term (default: by one more term of the same length)."""
    body: dict[str, Any] = {"reason": reason}
    if ends_at is not None:
        body["ends_at"] = common.iso(ends_at)
    if term_seconds is not None:
        body["term_seconds"] = term_seconds
    data = _action(api_url, api_key, entitlement_id, "renew", body)
    _show_change(data, "entitlement", _ENT_COLUMNS, as_json)


@grants_app.command("rehost")
def entitlements_rehost(
    entitlement_id: str,
    *,
    from_device: Annotated[str, typer.Option("--from", help="failed device id")],
    to_device: Annotated[str, typer.Option("--to", help="replacement device id")],
    temporary_seconds: Annotated[
        int | None, typer.Option(min=60, help="temporary until confirmed")
    ] = None,
    reason: Reason = "",
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKeyOpt = None,
    as_json: JsonOut = False,
) -> None:
    """Move the entitlement from a failed device to its replacement."""
    body: dict[str, Any] = {
        "from_device_id": from_device,
        "to_device_id": to_device,
        "temporary_seconds": temporary_seconds,
        "reason": reason,
    }
    data = _action(api_url, api_key, entitlement_id, "rehost", body)
    _show_change(data, "activation", _ACTIVATION_COLUMNS, as_json)


@grants_app.command("history")
def entitlements_history(
    entitlement_id: str,
    limit: Limit = 50,
    offset: Offset = 0,
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKeyOpt = None,
    as_json: JsonOut = False,
) -> None:
    """One entitlement's history, newest first."""
    path = f"/entitlements/{entitlement_id}/history"
    data = common.call(api_url, api_key, "GET", path, params=common.page_params(limit, offset))
    common.show(data, _HISTORY_COLUMNS, as_json, "history")


@grants_app.command("device")
def entitlements_device(
    device_id: str,
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKeyOpt = None,
    as_json: JsonOut = False,
) -> None:
    """A device's grants and effective features now."""
    data = common.call(api_url, api_key, "GET", f"/devices/{device_id}/entitlements")
    if as_json:
        typer.echo(json.dumps(data, indent=2, sort_keys=True))
        return
    grant_columns = ["entitlement_id", "license_model", "status", "ends_at", "in_force"]
    common.show(data["grants"], grant_columns, False, "grants")
    features = [{"key": key, **entry} for key, entry in data["features"].items()]
    common.show(
        features, ["key", "enabled", "limit", "cap", "period", "overage"], False, "features"
    )


# ---------------------------------------------------------------- activations


@activations_app.command("list")
def activations_list(
    entitlement_id: str,
    include_closed: Annotated[bool, typer.Option(help="also closed ones")] = False,
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKeyOpt = None,
    as_json: JsonOut = False,
) -> None:
    """List an entitlement's activations."""
    path = f"/entitlements/{entitlement_id}/activations"
    data = common.call(api_url, api_key, "GET", path, params={"include_closed": include_closed})
    common.show(data, _ACTIVATION_COLUMNS, as_json, "activations")


@activations_app.command("add")
def activations_add(
    entitlement_id: str,
    device_id: str,
    reason: Reason = "",
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKeyOpt = None,
    as_json: JsonOut = False,
) -> None:
    """Activate an entitlement on a device."""
    path = f"/entitlements/{entitlement_id}/activations"
    data = common.call(
        api_url, api_key, "POST", path, json={"device_id": device_id, "reason": reason}
    )
    _show_change(data, "activation", _ACTIVATION_COLUMNS, as_json)


@activations_app.command("remove")
def activations_remove(
    entitlement_id: str,
    device_id: str,
    reason: Reason = "",
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKeyOpt = None,
    as_json: JsonOut = False,
) -> None:
    """Deactivate an entitlement on a device."""
    path = f"/entitlements/{entitlement_id}/activations/{device_id}"
    data = common.call(api_url, api_key, "DELETE", path, params={"reason": reason})
    _show_change(data, "activation", _ACTIVATION_COLUMNS, as_json)


@activations_app.command("confirm-rehost")
def activations_confirm(
    entitlement_id: str,
    device_id: str,
    reason: Reason = "",
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKeyOpt = None,
    as_json: JsonOut = False,
) -> None:
    """Make a rehost's temporary activation permanent."""
    path = f"/entitlements/{entitlement_id}/activations/{device_id}/confirm"
    data = common.call(api_url, api_key, "POST", path, json={"reason": reason})
    _show_change(data, "activation", _ACTIVATION_COLUMNS, as_json)
