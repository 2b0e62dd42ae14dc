"""Hub settings: environment variables (``HUB_`` prefix) over an optional TOML file.

Nothing is read at import time; :func:`load_settings` builds a :class:`Settings`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

BrokerKind = Literal["embedded", "mosquitto", "external"]


class Settings(BaseSettings):
    """Every knob of ``hub serve``; defaults give the embedded, service-free setup."""

    model_config = SettingsConfigDict(env_prefix="HUB_", extra="forbid")

    data_dir: Path = Field(default=Path(".hub-data"), description="SQLite, keys, blobs")
    database_url: str | None = Field(default=None, description="default: SQLite in data_dir")
    broker: BrokerKind = Field(
        default="embedded", description="embedded amqtt, managed mosquitto, or external"
    )
    mqtt_url: str | None = Field(
        default=None, description="external broker, e.g. mqtt://127.0.0.1:1883"
    )
    claim_mqtt_url: str | None = Field(
        default=None, description="external claim broker (Mosquitto: a separate process)"
    )
    mosquitto_binary: str | None = Field(default=None, description="default: mosquitto on PATH")
    mosquitto_password_file: Path | None = Field(
        default=None, description="external Mosquitto: password file the hub keeps in sync"
    )
    mosquitto_pid_file: Path | None = Field(
        default=None, description="external Mosquitto: pid file; SIGHUP after each sync"
    )
    mqtt_host: str = "127.0.0.1"
    mqtt_port: int = Field(default=1883, ge=0, le=65535)
    claim_mqtt_port: int = Field(
        default=0, ge=0, le=65535, description="managed Mosquitto claim broker; 0 = mqtt_port + 1"
    )
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8080, ge=0, le=65535)
    hub_client_id: str = "hub-main"
    hub_mqtt_password: SecretStr | None = Field(
        default=None, description="default: generated into data_dir"
    )
    max_payload_bytes: int = Field(default=64 * 1024, ge=256, le=16 * 1024 * 1024)
    claim_skew_seconds: int = Field(default=300, ge=1)
    presence_stale_seconds: int = Field(default=120, ge=1)
    manifest_lease_seconds: int = Field(default=3 * 86_400, ge=60, description="manifest lease")
    manifest_renew_before_seconds: int = Field(
        default=86_400, ge=1, description="re-issue when the lease ends within this window"
    )
    manifest_ack_timeout_seconds: int = Field(default=60, ge=1)
    seat_timeout_seconds: int = Field(
        default=300, ge=5, description="floating-seat heartbeat timeout"
    )
    maintenance_interval_seconds: int = Field(default=30, ge=1)
    shutdown_timeout_seconds: int = Field(
        default=5,
        gt=0,
        le=300,
        description="on SIGTERM: how long open requests and the broker may take to stop",
    )
    usage_future_skew_seconds: int = Field(
        default=300, ge=0, description="usage timestamps further ahead are quarantined"
    )
    usage_max_age_seconds: int = Field(
        default=90 * 86_400, ge=1, description="usage timestamps older than this are quarantined"
    )
    log_level: str = "INFO"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Order: explicit arguments, then ``HUB_*`` variables, then the TOML file."""
        toml_path = os.environ.get("HUB_CONFIG")
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if toml_path:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(toml_path)))
        return tuple(sources)

    @property
    def effective_database_url(self) -> str:
        """The database URL in use: the configured one or SQLite in ``data_dir``."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'hub.db').resolve()}"

    @property
    def keys_dir(self) -> Path:
        """Where the hub keeps its signing keys."""
        return self.data_dir / "keys"


def load_settings(config_file: Path | None = None, **overrides: object) -> Settings:
    """Build settings from ``config_file`` (TOML), ``HUB_*`` variables and ``overrides``."""
    if config_file is not None:
        os.environ["HUB_CONFIG"] = str(config_file)
    clean = {k: v for k, v in overrides.items() if v is not None}
    return Settings(**clean)  # type: ignore[arg-type]
