"""``device-agent``: run the agent, or generate a device key for pre-registration."""

from __future__ import annotations

import base64
import json
import logging
import signal
import sys
import time
from dataclasses import asdict
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from device_agent.config import load_config
from device_agent.errors import AgentError
from device_agent.identity import IdentityStore, public_key_bytes
from device_agent.runner import AgentRunner
from device_agent.trust import TrustError, inspect_manifest
from device_agent.trust_store import TrustStore, load_anchor_state
from protocols.manifest import manifest_to_json

app = typer.Typer(help="The device agent.", no_args_is_help=True, add_completion=False)


@app.command()
def run(
    config: Annotated[Path, typer.Option("--config", "-c", help="agent TOML file")],
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING")] = "INFO",
) -> None:
    """Connect, claim an identity if needed, and stay online until SIGTERM/SIGINT."""
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        runner = AgentRunner(load_config(config))
    except AgentError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None

    def _stop(_signum: int, _frame: FrameType | None) -> None:
        runner.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        runner.run()
    except AgentError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


@app.command()
def keygen(
    out: Annotated[Path, typer.Argument(help="where to write the PEM private key")],
) -> None:
    """Create an Ed25519 device key and print its public key (base64) for registration."""
    if out.exists():
        typer.echo(f"error: {out} exists", err=True)
        raise typer.Exit(2)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    out.write_bytes(pem)
    out.chmod(0o600)
    sys.stdout.write(base64.b64encode(public_key_bytes(key)).decode() + "\n")


@app.command("inspect-manifest")
def inspect_manifest_command(
    file: Annotated[Path, typer.Argument(help="the signed manifest (COSE_Sign1 bytes)")],
    anchors: Annotated[
        Path,
        typer.Option(
            "--anchors", help="agent state dir, its identity.cbor/trust.cbor, or a JSON file"
        ),
    ],
    now: Annotated[
        int | None, typer.Option("--now", help="judge expiry at this Unix time (default: now)")
    ] = None,
) -> None:
    """Verify a signed feature manifest and print it as JSON; exit 1 if it does not verify."""
    try:
        data = file.read_bytes()
        state = load_anchor_state(anchors)
    except (OSError, AgentError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    at = int(time.time()) if now is None else now
    try:
        manifest = inspect_manifest(state, data, now=at)
    except TrustError as exc:
        typer.echo(f"{type(exc).__name__}: {exc}", err=True)
        raise typer.Exit(1) from None
    sys.stdout.write(json.dumps(manifest_to_json(manifest), indent=2) + "\n")


@app.command("features")
def features_command(
    config: Annotated[Path, typer.Option("--config", "-c", help="agent TOML file")],
    now: Annotated[int | None, typer.Option(help="evaluate at this Unix time")] = None,
) -> None:
    """Print the features this device may use now, as its trust store decides (JSON).

    An empty object means safe defaults: no manifest, or its lease has run out.
    """
    try:
        cfg = load_config(config)
        identity = IdentityStore(cfg.state_dir).load()
        if identity is None:
            raise AgentError("the device has not claimed an identity yet")
        store = TrustStore.open(cfg.state_dir, identity)
        at = now if now is not None else int(time.time())
        features = store.effective_features(now=at)
    except AgentError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    state = store.state
    document = {
        "device_id": identity.device_id,
        "manifest_seq": state.manifest_seq,
        "not_after": state.manifest.not_after if state.manifest else None,
        "features": {
            k: {n: v for n, v in asdict(e).items() if v is not None} for k, e in features.items()
        },
    }
    sys.stdout.write(json.dumps(document, indent=2, sort_keys=True) + "\n")


@app.command("meter")
def meter_command(
    meter: Annotated[str, typer.Argument(help="the metered feature's key, e.g. api_calls")],
    quantity: Annotated[str, typer.Argument(help="units used: a number in 0..10^12")],
    config: Annotated[Path, typer.Option("--config", "-c", help="agent TOML file")],
    dim: Annotated[
        str | None, typer.Option("--dim", help="dimension value for unique-count meters")
    ] = None,
    now: Annotated[int | None, typer.Option(help="record at this Unix time")] = None,
) -> None:
    """Record usage of a metered feature into the agent's durable buffer (JSON out).

    Exit 0: recorded; 1: refused (not entitled, over the cap, buffer full);
    2: invalid usage, configuration or state. A negative quantity needs ``--``
    before the arguments (and is refused).
    """
    from device_agent.metering.errors import InvalidUsage, UsageRefused  # noqa: PLC0415
    from device_agent.metering.shell import record_from_shell  # noqa: PLC0415

    try:
        document = record_from_shell(load_config(config), meter, quantity, dim, now)
    except InvalidUsage as exc:
        typer.echo(f"invalid: {exc}", err=True)
        raise typer.Exit(2) from None
    except UsageRefused as exc:
        typer.echo(f"refused: {exc.code}: {exc}", err=True)
        raise typer.Exit(1) from None
    except AgentError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    sys.stdout.write(json.dumps(document, sort_keys=True) + "\n")


@app.command("usage")
def usage_command(
    config: Annotated[Path, typer.Option("--config", "-c", help="agent TOML file")],
) -> None:
    """Show the usage buffer: pending, dropped, acknowledged (per hub code), periods (JSON)."""
    from device_agent.metering.shell import stats_document  # noqa: PLC0415

    try:
        document = stats_document(load_config(config))
    except AgentError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    sys.stdout.write(json.dumps(document, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    app()
