"""What the ``device-agent meter`` and ``device-agent usage`` commands do (docs/metering.md)."""

from __future__ import annotations

import re
from dataclasses import asdict
from typing import Any

from device_agent.config import AgentConfig
from device_agent.errors import StateError
from device_agent.metering.api import open_meter_for
from device_agent.metering.buffer import BUFFER_FILE, BufferStats, UsageBuffer
from device_agent.metering.errors import InvalidUsage
from device_agent.metering.meter import Recorded

_INTEGER = re.compile(r"[0-9]{1,19}")


def parse_quantity(text: str) -> int | float:
    """A quantity typed in a shell: digits are an int, anything else must be a float.

    Raises:
        InvalidUsage: not a number (range and finiteness are checked when recording).
    """
    if _INTEGER.fullmatch(text):
        return int(text)
    try:
        return float(text)
    except ValueError:
        raise InvalidUsage(f"quantity {text!r} is not a number") from None


def record_from_shell(
    config: AgentConfig, meter: str, quantity: str, dim: str | None, now: int | None = None
) -> dict[str, Any]:
    """Record one usage from the command line; returns the stored record as JSON.

    Raises:
        UsageRefused: invalid, not entitled, over the cap, or the buffer is full.
        ConfigError, StateError: metering not configured, or state unreadable.
    """
    amount = parse_quantity(quantity)
    with open_meter_for(config) as opened:
        recorded = opened.record(meter, amount, dim=dim, now=now)
    return recorded_document(recorded)


def recorded_document(recorded: Recorded) -> dict[str, Any]:
    """JSON view of a :class:`Recorded`."""
    record = recorded.record
    return {
        "boot_epoch": record.boot_epoch,
        "seq": record.seq,
        "meter": record.meter,
        "quantity": record.quantity,
        "ts": record.ts,
        "dim": record.dim,
        "cap": recorded.cap,
        "used": None if recorded.used is None else str(recorded.used),
        "over_cap": recorded.over_cap,
    }


def stats_document(config: AgentConfig) -> dict[str, Any]:
    """The buffer's counters as JSON.

    Raises:
        StateError: there is no buffer yet, or it cannot be read.
    """
    path = config.state_dir / BUFFER_FILE
    if not path.exists():
        raise StateError(f"no usage buffer at {path}: nothing was metered yet")
    buffer = UsageBuffer.open(path)
    try:
        return _stats(buffer.stats())
    finally:
        buffer.close()


def _stats(stats: BufferStats) -> dict[str, Any]:
    document = asdict(stats)
    document["periods"] = [
        {**asdict(period), "used": str(period.used), "over": str(period.over)}
        for period in stats.periods
    ]
    return document


__all__ = ["parse_quantity", "record_from_shell", "recorded_document", "stats_document"]
