"""The agent's ``[metering]`` table (see docs/metering.md).

Example::

    [metering]
    enabled = true              # default true when the table is present
    max_records = 100000        # buffer bound (1..10,000,000); beyond it records are refused
    batch_max_records = 1000    # records per usage batch (1..1000)
    batch_max_bytes = 49152     # encoded bytes per batch (1024..49152)
    max_in_flight = 4           # unacknowledged batches at once (1..64)
    retry_seconds = 30          # resend an unanswered batch after this (1..3600, doubling to x8)
    flush_seconds = 1           # send a partial batch at most this often (0..3600)

Unknown keys are refused, so a typo never silently falls back to a default.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from device_agent.errors import ConfigError
from device_agent.metering.buffer import DEFAULT_MAX_RECORDS, MAX_MAX_RECORDS
from protocols.usage_messages import DEVICE_BATCH_BYTES, MAX_RECORDS

TABLE = "metering"


@dataclass(frozen=True, slots=True)
class MeteringSettings:
    """Validated ``[metering]`` settings."""

    enabled: bool = True
    max_records: int = DEFAULT_MAX_RECORDS
    batch_max_records: int = MAX_RECORDS
    batch_max_bytes: int = DEVICE_BATCH_BYTES
    max_in_flight: int = 4
    retry_seconds: float = 30.0
    flush_seconds: float = 1.0


_INTS = {
    "max_records": (1, MAX_MAX_RECORDS),
    "batch_max_records": (1, MAX_RECORDS),
    "batch_max_bytes": (1024, DEVICE_BATCH_BYTES),
    "max_in_flight": (1, 64),
}
_FLOATS = {"retry_seconds": (1.0, 3600.0), "flush_seconds": (0.0, 3600.0)}


def parse_settings(sections: Mapping[str, Mapping[str, Any]]) -> MeteringSettings | None:
    """The ``[metering]`` table of an agent config, validated.

    Returns:
        ``None`` when the table is absent; settings (possibly ``enabled = false``) otherwise.

    Raises:
        ConfigError: an unknown key or a value of the wrong type or range.
    """
    if TABLE not in sections:
        return None
    table = sections[TABLE]
    unknown = sorted(set(table) - {"enabled", *_INTS, *_FLOATS})
    if unknown:
        raise ConfigError(f"[metering]: unknown key(s) {', '.join(unknown)}")
    enabled = table.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ConfigError("metering.enabled must be true or false")
    values: dict[str, Any] = {"enabled": enabled}
    for name, (low, high) in _INTS.items():
        if name in table:
            values[name] = _int(table[name], name, low, high)
    for name, (flow, fhigh) in _FLOATS.items():
        if name in table:
            values[name] = _float(table[name], name, flow, fhigh)
    return MeteringSettings(**values)


def enabled_settings(sections: Mapping[str, Mapping[str, Any]]) -> MeteringSettings | None:
    """The settings when metering is configured and enabled, else ``None``."""
    settings = parse_settings(sections)
    return settings if settings is not None and settings.enabled else None


def _int(value: Any, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"metering.{name} must be an integer in {low}..{high}")
    return value


def _float(value: Any, name: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise ConfigError(f"metering.{name} must be a number in {low:g}..{high:g}")
    return float(value)


__all__ = ["TABLE", "MeteringSettings", "enabled_settings", "parse_settings"]
