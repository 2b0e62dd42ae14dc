"""The agent's TOML configuration (``device-agent run --config agent.toml``).

Example::

    [device]
    serial = "SN-0001"
    state_dir = "state/SN-0001"

    [claim]
    token = "hubc_..."        # a batch claim token, or
    # key_file = "dev.pem"    # the Ed25519 key the manufacturer pre-registered

    [broker]
    host = "127.0.0.1"
    port = 1883
    claim_port = 1883         # Mosquitto deployments use a separate claim listener
    keepalive = 30

    [seats]                   # floating licences to hold while online
    products = ["<product id>"]

    [agent]
    heartbeat_seconds = 30
    reconnect_min_seconds = 0.5
    reconnect_max_seconds = 30
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from device_agent.errors import ConfigError
from protocols.ids import is_valid_id


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """Validated agent configuration."""

    serial: str
    state_dir: Path
    broker_host: str
    broker_port: int
    claim_port: int
    claim_token: str | None = None
    claim_key_file: Path | None = None
    keepalive: int = 30
    heartbeat_seconds: float = 30.0
    reconnect_min_seconds: float = 0.5
    reconnect_max_seconds: float = 30.0
    agent_version: str = "0.1.0"
    seat_products: tuple[str, ...] = ()
    # Tables the core does not read ([metering], [firmware], ...): each
    # session component validates its own (see device_agent.components).
    sections: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


def load_config(path: Path) -> AgentConfig:
    """Read and validate ``path``; relative paths inside resolve against its folder.

    Raises:
        ConfigError: for a missing file, bad TOML or an invalid value.
    """
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    return parse_config(raw, base=path.parent)


def parse_config(raw: dict[str, Any], *, base: Path) -> AgentConfig:
    """Validate a parsed TOML document."""
    device, claim = _table(raw, "device"), _table(raw, "claim")
    broker, agent = _table(raw, "broker"), _table(raw, "agent")
    serial = device.get("serial")
    if not isinstance(serial, str) or not is_valid_id(serial):
        raise ConfigError("device.serial must be a valid id ([A-Za-z0-9._-], 1..64)")
    token, key_file = claim.get("token"), claim.get("key_file")
    if (token is None) == (key_file is None):
        raise ConfigError("claim needs exactly one of token or key_file")
    port = _int(broker, "port", 1883, 1, 65535)
    return AgentConfig(
        serial=serial,
        state_dir=base / _str(device, "state_dir", f"state/{serial}"),
        broker_host=_str(broker, "host", "127.0.0.1"),
        broker_port=port,
        claim_port=_int(broker, "claim_port", port, 1, 65535),
        claim_token=_optional_str(token, "claim.token"),
        claim_key_file=base / key_file if isinstance(key_file, str) else None,
        keepalive=_int(broker, "keepalive", 30, 5, 3600),
        heartbeat_seconds=_float(agent, "heartbeat_seconds", 30.0),
        reconnect_min_seconds=_float(agent, "reconnect_min_seconds", 0.5),
        reconnect_max_seconds=_float(agent, "reconnect_max_seconds", 30.0),
        seat_products=_products(_table(raw, "seats")),
        sections={name: _table(raw, name) for name in raw if name not in _CORE_TABLES},
    )


_CORE_TABLES = frozenset({"device", "claim", "broker", "seats", "agent"})


def _products(seats: dict[str, Any]) -> tuple[str, ...]:
    products = seats.get("products", [])
    if not isinstance(products, list) or not all(
        isinstance(p, str) and 0 < len(p) <= 64 for p in products
    ):
        raise ConfigError("seats.products must be a list of product ids")
    return tuple(products)


def _table(raw: dict[str, Any], name: str) -> dict[str, Any]:
    value = raw.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"[{name}] must be a table")
    return value


def _str(table: dict[str, Any], key: str, default: str) -> str:
    value = table.get(key, default)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{key} must be a non-empty string")
    return value


def _optional_str(value: Any, what: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{what} must be a non-empty string")
    return value


def _int(table: dict[str, Any], key: str, default: int, low: int, high: int) -> int:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{key} must be an integer in {low}..{high}")
    return value


def _float(table: dict[str, Any], key: str, default: float) -> float:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConfigError(f"{key} must be a positive number")
    return float(value)
