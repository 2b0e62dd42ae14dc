"""``hub firmware``: the catalogue, envelopes, rollouts.

Commands ask a running hub over its REST API (``--api-url`` / ``HUB_API_URL``,
``--api-key`` / ``HUB_API_KEY``) and exit 1 with the server's message on
error; ``--json`` prints the API's JSON. ``inspect`` works offline: it verifies
an envelope file with a PEM key and prints it as JSON, or exits 1 with the
reason it does not verify.

Waves are given as ``--wave 5%`` (a share of the targets) or ``--wave 20`` (a
number of devices), in order; the last wave takes every remaining device.
Maintenance windows are ``--window 02:00-04:00`` (every day) or
``--window sat,sun@01:00-05:00`` (UTC; an end before the start runs past midnight).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from hub.cli import common
from hub.cli.common import DEFAULT_API_URL, ApiKeyOpt, ApiUrl, JsonOut, Limit, Offset

firmware_app = typer.Typer(help="Firmware: catalogue, envelopes, rollouts.", no_args_is_help=True)
rollouts_app = typer.Typer(
    help="Firmware rollouts: waves, thresholds, windows.", no_args_is_help=True
)
firmware_app.add_typer(rollouts_app, name="rollouts")

_PACKAGE_COLUMNS = [
    "id",
    "version",
    "sequence",
    "size",
    "chunk_size",
    "required_product_id",
    "created_at",
]
_ROLLOUT_COLUMNS = [
    "id",
    "name",
    "package_version",
    "state",
    "current_wave",
    "target_count",
    "counts",
]
_JOB_COLUMNS = [
    "device_id",
    "job_id",
    "wave",
    "attempt",
    "state",
    "last_step",
    "reason",
    "deadline_at",
]
_WINDOW = re.compile(r"(?:([a-z,]+)@)?(\d\d:\d\d)-(\d\d:\d\d)")


@firmware_app.callback()
def firmware() -> None:
    """Firmware: catalogue, envelopes, rollouts."""


# --- catalogue ------------------------------------------------------------------------------


@firmware_app.command("upload")
def upload(
    file: Annotated[Path, typer.Argument(help="the firmware image", exists=True, dir_okay=False)],
    class_id: Annotated[str, typer.Option("--class-id", help="device class id")],
    version: Annotated[str, typer.Option(help="semantic version, newer than the class's latest")],
    release_notes: Annotated[str, typer.Option(help="release notes")] = "",
    required_product_id: Annotated[
        str | None, typer.Option(help="only devices entitled to this product receive it")
    ] = None,
    required_feature: Annotated[
        str | None, typer.Option(help="...and with this feature of it enabled")
    ] = None,
    chunk_size: Annotated[int | None, typer.Option(help="bytes per chunk (1024..32768)")] = None,
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKeyOpt = None,
    as_json: JsonOut = False,
) -> None:
    """Upload a package: the hub stores it and signs its SUIT envelope."""
    fields = {
        "device_class_id": class_id,
        "version": version,
        "release_notes": release_notes,
        "required_product_id": required_product_id,
        "required_feature": required_feature,
        "chunk_size": None if chunk_size is None else str(chunk_size),
    }
    with file.open("rb") as handle:
        data = common.call(
            api_url,
            api_key,
            "POST",
            "/firmware/packages",
            data={k: v for k, v in fields.items() if v},
            files={"file": (file.name, handle, "application/octet-stream")},
        )
    common.show(data, _PACKAGE_COLUMNS, as_json)


@firmware_app.command("packages")
def packages(
    class_id: Annotated[str | None, typer.Option("--class-id", help="only this class")] = None,
    limit: Limit = 50,
    offset: Offset = 0,
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKeyOpt = None,
    as_json: JsonOut = False,
) -> None:
    """List packages, newest first."""
    params = common.page_params(limit, offset, device_class_id=class_id)
    data = common.call(api_url, api_key, "GET", "/firmware/packages", params=params)
    common.show(data, _PACKAGE_COLUMNS, as_json, title="firmware packages")


@firmware_app.command("package")
def package(
    package_id: str,
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKeyOpt = None,
    as_json: JsonOut = False,
) -> None:
    """Show one package."""
    data = common.call(api_url, api_key, "GET", f"/firmware/packages/{package_id}")
    common.show(data, [*_PACKAGE_COLUMNS, "sha256", "manifest_digest", "release_notes"], as_json)


@firmware_app.command("envelope")
def envelope(
    package_id: str,
    out: Annotated[Path, typer.Option("--out", help="where to write the envelope", dir_okay=False)],
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKeyOpt = None,
) -> None:
    """Fetch a package's signed SUIT envelope into a file."""
    if not api_key:
        common.fail("no API key: pass --api-key or set HUB_API_KEY")
    try:
        with common.make_client(api_url, api_key) as client:
            response = client.get(f"/api/v1/firmware/packages/{package_id}/envelope")
    except httpx.HTTPError as exc:
        common.fail(f"cannot reach the hub at {api_url}: {exc}")
    if response.is_error:
        common.fail(common.error_message(response))
    out.write_bytes(response.content)
    typer.echo(f"wrote {len(response.content)} bytes to {out}")


@firmware_app.command("inspect")
def inspect(
    envelope_file: Annotated[Path, typer.Argument(metavar="ENVELOPE", help="a SUIT envelope file")],
    key: Annotated[
        Path, typer.Option("--key", help="PEM public key (or private key) to verify with")
    ],
) -> None:
    """Verify an envelope offline and print it as JSON; exit 1 with the reason if it fails."""
    from hub.firmware.envelope import keys_from_pem
    from protocols.errors import ProtocolError
    from protocols.suit import inspect_envelope

    try:
        data = envelope_file.read_bytes()
        pem = key.read_bytes()
    except OSError as exc:
        common.fail(f"cannot read {exc.filename}: {exc.strerror}")
    try:
        manifest = inspect_envelope(data, keys_from_pem(pem))
    except ProtocolError as exc:
        common.fail(f"envelope does not verify: {exc.code}: {exc}")
    common.echo_json({"verified": True, **manifest.as_json()})


@firmware_app.command("device")
def device(
    device_id: str,
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKeyOpt = None,
    as_json: JsonOut = False,
) -> None:
    """What a device runs and its current firmware jobs."""
    data = common.call(api_url, api_key, "GET", f"/devices/{device_id}/firmware")
    if as_json:
        common.echo_json(data)
        return
    version = data["installed_version"] or "unknown"
    typer.echo(f"{device_id}: version {version} (sequence {data['installed_seq']})")
    common.show(
        data["jobs"],
        ["job_id", "rollout_id", "state", "attempt", "last_step", "deadline_at"],
        False,
    )


# --- rollouts -------------------------------------------------------------------------------


def parse_wave(text: str) -> dict[str, int]:
    """``5%`` → ``{"percent": 5}``; ``20`` → ``{"size": 20}``."""
    value = text.strip()
    try:
        if value.endswith("%"):
            return {"percent": int(value[:-1])}
        return {"size": int(value)}
    except ValueError:
        raise typer.BadParameter(
            f"a wave is a percentage (5%) or a device count (20), not {text!r}"
        ) from None


def parse_window(text: str) -> dict[str, Any]:
    """``sat,sun@01:00-05:00`` or ``02:00-04:00`` → the API's window object."""
    match = _WINDOW.fullmatch(text.strip().lower())
    if match is None:
        raise typer.BadParameter(
            f"a window is [days@]HH:MM-HH:MM, e.g. sat,sun@01:00-05:00, not {text!r}"
        )
    days, start, end = match.groups()
    window: dict[str, Any] = {"start": start, "end": end}
    if days:
        window["days"] = days.split(",")
    return window


@rollouts_app.command("create")
def create(
    package_id: Annotated[str, typer.Option("--package-id", help="the package to roll out")],
    name: Annotated[str, typer.Option(help="a name for people")],
    wave: Annotated[
        list[str] | None, typer.Option("--wave", help="5% or 20; repeat, in order")
    ] = None,
    tag: Annotated[
        list[str] | None, typer.Option("--tag", help="target devices with this tag")
    ] = None,
    current_version: Annotated[
        list[str] | None, typer.Option("--current-version", help="target devices running this")
    ] = None,
    account_id: Annotated[str | None, typer.Option(help="target this account's devices")] = None,
    success_percent: Annotated[int, typer.Option(help="confirmed share to advance a wave")] = 95,
    failure_percent: Annotated[int, typer.Option(help="failure share that trips")] = 10,
    failure_min_sample: Annotated[int, typer.Option(help="finished devices before judging")] = 5,
    failure_action: Annotated[str, typer.Option(help="pause | abort")] = "pause",
    device_timeout: Annotated[
        int, typer.Option(help="seconds without progress → timed out")
    ] = 3600,
    window: Annotated[
        list[str] | None, typer.Option("--window", help="[days@]HH:MM-HH:MM UTC")
    ] = None,
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKeyOpt = None,
    as_json: JsonOut = False,
) -> None:
    """Create a draft rollout (start it with ``rollouts start``)."""
    body: dict[str, Any] = {
        "name": name,
        "package_id": package_id,
        "filter": {
            "tags": tag or [],
            "current_versions": current_version or [],
            "account_id": account_id,
        },
        "success_percent": success_percent,
        "failure_percent": failure_percent,
        "failure_min_sample": failure_min_sample,
        "failure_action": failure_action,
        "device_timeout_seconds": device_timeout,
        "maintenance_windows": [parse_window(w) for w in window or []],
    }
    if wave:
        body["waves"] = [parse_wave(w) for w in wave]
    data = common.call(api_url, api_key, "POST", "/firmware/rollouts", json=body)
    _show_rollout(data, as_json)


def _show_rollout(data: dict[str, Any], as_json: bool) -> None:
    if as_json:
        common.echo_json(data)
        return
    typer.echo(
        f"rollout {data['id']} ({data['name']}): {data['state']}"
        + (f" — {data['state_reason']}" if data.get("state_reason") else "")
    )
    typer.echo(
        f"package {data['package_version']}, {data['target_count']} devices, "
        f"wave {data['current_wave'] + 1} of {len(data['waves'])}; skipped {data['skipped'] or {}}"
    )
    rows = [
        {
            "wave": w["number"] + 1,
            "planned": w["planned"],
            "started_at": w["started_at"],
            "completed_at": w["completed_at"],
            "counts": ", ".join(f"{k}={v}" for k, v in w["counts"].items()) or None,
        }
        for w in data["waves"]
    ]
    common.show(rows, ["wave", "planned", "started_at", "completed_at", "counts"], False)


def _action(
    rollout_id: str, action: str, api_url: str, api_key: str | None, body: Any = None
) -> Any:
    return common.call(
        api_url, api_key, "POST", f"/firmware/rollouts/{rollout_id}/{action}", json=body
    )


Reason = Annotated[str | None, typer.Option(help="why (kept in the rollout and the audit log)")]


@rollouts_app.command("start")
def start(
    rollout_id: str,
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKeyOpt = None,
    as_json: JsonOut = False,
) -> None:
    """Select targets, plan the waves and start offering."""
    _show_rollout(_action(rollout_id, "start", api_url, api_key), as_json)


@rollouts_app.command("pause")
def pause(
    rollout_id: str, reason: Reason = None, api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKeyOpt = None, as_json: JsonOut = False,
) -> None:  # fmt: skip
    """Stop offering; devices already working go on."""
    _show_rollout(_action(rollout_id, "pause", api_url, api_key, {"reason": reason}), as_json)


@rollouts_app.command("resume")
def resume(
    rollout_id: str,
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKeyOpt = None,
    as_json: JsonOut = False,
) -> None:
    """Resume a paused rollout."""
    _show_rollout(_action(rollout_id, "resume", api_url, api_key), as_json)


@rollouts_app.command("cancel")
def cancel(
    rollout_id: str, reason: Reason = None, api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKeyOpt = None, as_json: JsonOut = False,
) -> None:  # fmt: skip
    """Cancel: pending devices dropped, offered ones told to stop."""
    _show_rollout(_action(rollout_id, "cancel", api_url, api_key, {"reason": reason}), as_json)


@rollouts_app.command("retry")
def retry(
    rollout_id: str,
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKeyOpt = None,
    as_json: JsonOut = False,
) -> None:
    """Give failed, reverted and timed-out devices another attempt."""
    data = _action(rollout_id, "retry", api_url, api_key)
    if as_json:
        common.echo_json(data)
        return
    typer.echo(f"{data['retried']} device(s) get another attempt")
    _show_rollout(data["rollout"], False)


@rollouts_app.command("show")
def show(
    rollout_id: str,
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKeyOpt = None,
    as_json: JsonOut = False,
) -> None:
    """A rollout's state and progress per wave."""
    _show_rollout(common.call(api_url, api_key, "GET", f"/firmware/rollouts/{rollout_id}"), as_json)


@rollouts_app.command("list")
def list_rollouts(
    state: Annotated[str | None, typer.Option(help="only rollouts in this state")] = None,
    limit: Limit = 50,
    offset: Offset = 0,
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKeyOpt = None,
    as_json: JsonOut = False,
) -> None:
    """The tenant's rollouts, newest first."""
    params = common.page_params(limit, offset, state=state)
    data = common.call(api_url, api_key, "GET", "/firmware/rollouts", params=params)
    if not as_json:
        for item in data["items"]:
            item["counts"] = ", ".join(f"{k}={v}" for k, v in item["counts"].items())
    common.show(data, _ROLLOUT_COLUMNS, as_json, title="rollouts")


@rollouts_app.command("devices")
def devices(
    rollout_id: str,
    state: Annotated[str | None, typer.Option(help="only jobs in this state")] = None,
    wave: Annotated[int | None, typer.Option(help="only this wave (1-based)", min=1)] = None,
    limit: Limit = 50,
    offset: Offset = 0,
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKeyOpt = None,
    as_json: JsonOut = False,
) -> None:
    """Per-device states of a rollout."""
    params = common.page_params(limit, offset, state=state, wave=None if wave is None else wave - 1)
    data = common.call(
        api_url, api_key, "GET", f"/firmware/rollouts/{rollout_id}/devices", params=params
    )
    common.show(data, _JOB_COLUMNS, as_json, title=f"rollout {rollout_id}")
