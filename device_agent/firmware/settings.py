"""The ``[firmware]`` table of the agent's configuration.

Example (every key but the two ids is optional; defaults shown)::

    [firmware]
    vendor_id = "fa6b4a53-d5ad-5fdf-be9d-e663e4d41ffe"   # this device's SUIT vendor id
    class_id = "1492af14-2569-5e48-bf42-9b2d51f2ab45"    # and class id (the hub's device class)
    transport = "mqtt"              # or "http": ranged GETs from the hub's API
    http_url = "http://127.0.0.1:8080"   # the hub's API (required for "http")
    in_flight = 32                  # chunks requested or buffered ahead of the written prefix
    request_size = 16               # chunks per FirmwareChunkRequest (1..16)
    chunk_timeout_seconds = 10      # no new chunk this long (or 3 round trips, <= 4x): ask again
    max_stalls = 6                  # stalls in a row before the job fails
    download_timeout_seconds = 3600 # the whole download, from the offer
    report_retry_seconds = 30       # resend unacknowledged step reports this often
    max_boot_attempts = 3           # N: trial boots without a verdict before reverting
    health_check = "pass"           # simulated verdict of a new image: pass, fail, silent
    factory_image = "factory.bin"   # image provisioned into slot a on first start
                                    # (relative: to the device's state_dir)
    factory_sequence = 0            # its SUIT sequence number

Without a ``[firmware]`` table the agent runs no firmware component.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from device_agent.errors import ConfigError
from device_agent.firmware.install import DEFAULT_MAX_BOOT_ATTEMPTS
from protocols.firmware_messages import MAX_CHUNK_WINDOW

Transport = Literal["mqtt", "http"]
HealthVerdict = Literal["pass", "fail", "silent"]


@dataclass(frozen=True, slots=True)
class FirmwareSettings:
    """Validated ``[firmware]`` settings (see the module docstring)."""

    vendor_id: str
    class_id: str
    transport: Transport = "mqtt"
    http_url: str | None = None
    in_flight: int = 32
    request_size: int = MAX_CHUNK_WINDOW
    chunk_timeout_seconds: int = 10
    max_stalls: int = 6
    download_timeout_seconds: int = 3600
    report_retry_seconds: int = 30
    max_boot_attempts: int = DEFAULT_MAX_BOOT_ATTEMPTS
    health_check: HealthVerdict = "pass"
    factory_image: Path | None = None
    factory_sequence: int = 0


_KEYS = frozenset(FirmwareSettings.__dataclass_fields__) | {"http_url"}


def parse_settings(table: Mapping[str, Any], *, base: Path) -> FirmwareSettings:
    """Validate a ``[firmware]`` table; a relative ``factory_image`` resolves against ``base``.

    Raises:
        ConfigError: an unknown key or an invalid value.
    """
    unknown = set(table) - _KEYS
    if unknown:
        raise ConfigError(f"[firmware]: unknown keys {', '.join(sorted(unknown))}")
    transport = _choice(table, "transport", ("mqtt", "http"), "mqtt")
    http_url = table.get("http_url")
    if http_url is not None and (
        not isinstance(http_url, str) or not http_url.startswith(("http://", "https://"))
    ):
        raise ConfigError("[firmware] http_url must be an http:// or https:// URL")
    if transport == "http" and http_url is None:
        raise ConfigError('[firmware] transport = "http" needs http_url')
    factory = table.get("factory_image")
    if factory is not None and (not isinstance(factory, str) or not factory):
        raise ConfigError("[firmware] factory_image must be a path")
    return FirmwareSettings(
        vendor_id=_uuid(table, "vendor_id"),
        class_id=_uuid(table, "class_id"),
        transport=transport,  # type: ignore[arg-type]
        http_url=http_url.rstrip("/") if http_url else None,
        in_flight=_int(table, "in_flight", 32, 1, 1024),
        request_size=_int(table, "request_size", MAX_CHUNK_WINDOW, 1, MAX_CHUNK_WINDOW),
        chunk_timeout_seconds=_int(table, "chunk_timeout_seconds", 10, 1, 3600),
        max_stalls=_int(table, "max_stalls", 6, 0, 1000),
        download_timeout_seconds=_int(table, "download_timeout_seconds", 3600, 1, 7 * 86400),
        report_retry_seconds=_int(table, "report_retry_seconds", 30, 1, 86400),
        max_boot_attempts=_int(table, "max_boot_attempts", DEFAULT_MAX_BOOT_ATTEMPTS, 1, 100),
        health_check=_choice(table, "health_check", ("pass", "fail", "silent"), "pass"),  # type: ignore[arg-type]
        factory_image=base / factory if factory else None,
        factory_sequence=_int(table, "factory_sequence", 0, 0, 2**63 - 1),
    )


def _uuid(table: Mapping[str, Any], key: str) -> str:
    value = table.get(key)
    try:
        return str(uuid.UUID(value))
    except (ValueError, TypeError, AttributeError):
        raise ConfigError(f"[firmware] {key} must be an RFC 4122 UUID") from None


def _int(table: Mapping[str, Any], key: str, default: int, low: int, high: int) -> int:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"[firmware] {key} must be an integer in {low}..{high}")
    return value


def _choice(table: Mapping[str, Any], key: str, allowed: tuple[str, ...], default: str) -> str:
    value = table.get(key, default)
    if value not in allowed:
        raise ConfigError(f"[firmware] {key} must be one of {', '.join(allowed)}")
    return str(value)


__all__ = ["FirmwareSettings", "HealthVerdict", "Transport", "parse_settings"]
