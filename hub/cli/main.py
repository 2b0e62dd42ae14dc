"""The ``hub`` command line: serve, database, broker config, and the registry."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hub.cli.analytics import analytics_app
from hub.cli.billing import billing_app
from hub.cli.entitlements import entitlements_app
from hub.cli.firmware import firmware_app
from hub.cli.registry import registry_app, tenant_app
from hub.cli.usage import usage_app
from hub.errors import HubError
from hub.settings import BrokerKind, load_settings

app = typer.Typer(help="IoT entitlement and firmware provisioning hub.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
app.add_typer(db_app, name="db")
keys_app = typer.Typer(help="The hub's signing keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(analytics_app, name="analytics")
app.add_typer(billing_app, name="billing")
app.add_typer(firmware_app, name="firmware")
app.add_typer(usage_app, name="usage")
app.add_typer(tenant_app, name="tenant")
for group in (*registry_app.registered_groups, *entitlements_app.registered_groups):
    app.add_typer(group.typer_instance, name=group.name)  # type: ignore[arg-type]

ConfigOption = Annotated[
    Path | None, typer.Option("--config", help="TOML settings file (HUB_* variables override)")
]


@app.command()
def serve(
    config: ConfigOption = None,
    data_dir: Annotated[Path | None, typer.Option(help="SQLite, keys, blobs")] = None,
    broker: Annotated[str | None, typer.Option(help="embedded | mosquitto | external")] = None,
    mqtt_url: Annotated[str | None, typer.Option(help="external broker mqtt://host:port")] = None,
    mqtt_port: Annotated[int | None, typer.Option(help="embedded/managed broker port")] = None,
    database_url: Annotated[
        str | None, typer.Option(help="SQLAlchemy URL, e.g. PostgreSQL")
    ] = None,
    api_port: Annotated[int | None, typer.Option(help="REST API port")] = None,
    log_level: Annotated[str | None, typer.Option(help="DEBUG, INFO, WARNING")] = None,
) -> None:
    """Run broker, MQTT client, REST API and scheduler in one process."""
    from hub.serve import serve as run_hub

    settings = load_settings(
        config,
        data_dir=data_dir,
        broker=_broker_kind(broker, mqtt_url),
        mqtt_url=mqtt_url,
        mqtt_port=mqtt_port,
        database_url=database_url,
        api_port=api_port,
        log_level=log_level,
    )
    try:
        run_hub(settings)
    except HubError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


def _broker_kind(broker: str | None, mqtt_url: str | None) -> BrokerKind | None:
    if broker is None:
        return "external" if mqtt_url else None
    if broker not in ("embedded", "mosquitto", "external"):
        raise typer.BadParameter("broker must be embedded, mosquitto or external")
    return broker  # type: ignore[return-value]


@db_app.command("upgrade")
def db_upgrade(
    config: ConfigOption = None,
    database_url: Annotated[str | None, typer.Option(help="SQLAlchemy URL")] = None,
) -> None:
    """Apply all pending schema migrations."""
    from hub.db.migrate import upgrade

    settings = load_settings(config, database_url=database_url)
    if settings.database_url is None:
        # The default SQLite file lives in data_dir, which may not exist yet.
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.effective_database_url)
    typer.echo("database schema is up to date")


@keys_app.command("rotate-manifest")
def rotate_manifest(config: ConfigOption = None) -> None:
    """Replace the manifest-signing key; devices move over through a signed rotation.

    Run it with the hub stopped, or restart the hub afterwards: the hub signs
    with the key it loaded at start.
    """
    from hub.clock import utc_now
    from hub.key_rotation import rotate_manifest_key

    result = rotate_manifest_key(load_settings(config), now=utc_now())
    typer.echo(
        f"rotation {result.seq}: manifest key {result.old_kid.hex()} -> {result.new_kid.hex()}"
        f" ({result.document}); restart the hub to sign with the new key"
    )


@app.command("mosquitto-config")
def mosquitto_config(
    out: Annotated[Path, typer.Option(help="directory for mosquitto.conf, passwd, acl")],
    config: ConfigOption = None,
    port: Annotated[int, typer.Option(help="device broker port")] = 1883,
    claim_port: Annotated[int, typer.Option(help="claim broker port (agents)")] = 1884,
    claim_hub_port: Annotated[int, typer.Option(help="claim broker port (the hub)")] = 1885,
) -> None:
    """Write the two Mosquitto configurations (devices, claims) the hub relies on.

    Run one mosquitto process per file: ``mosquitto.conf`` for devices and
    ``claim-mosquitto.conf`` for provisioning sessions (see docs/brokers.md).
    """
    from hub.broker.mosquitto import write_claim_config, write_config
    from hub.broker.passwords import hash_password
    from hub.db.engine import make_engine, make_session_factory
    from hub.keys import load_hub_keys
    from hub.registry.credentials import iter_device_password_hashes

    settings = load_settings(config)
    keys = load_hub_keys(settings)
    engine = make_engine(settings.effective_database_url)
    with make_session_factory(engine)() as session:
        credentials = list(iter_device_password_hashes(session))
    hub_hash = hash_password(keys.mqtt_password)
    files = write_config(
        out,
        host=settings.mqtt_host,
        port=port,
        hub_username=settings.hub_client_id,
        hub_password_hash=hub_hash,
        device_credentials=credentials,
        max_payload_bytes=settings.max_payload_bytes,
    )
    claim_files = write_claim_config(
        out,
        host=settings.mqtt_host,
        port=claim_port,
        hub_port=claim_hub_port,
        hub_username=settings.hub_client_id,
        hub_password_hash=hub_hash,
        max_payload_bytes=settings.max_payload_bytes,
    )
    typer.echo(f"wrote {files.config} ({len(credentials)} device credentials)")
    typer.echo(f"wrote {claim_files.config} (claims on :{claim_port}, hub on :{claim_hub_port})")


if __name__ == "__main__":
    app()
