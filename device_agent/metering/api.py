"""How the device application and tools reach the meter while the agent runs.

The usage buffer is an SQLite file, so any thread or process of the device
application can open its own :class:`~device_agent.metering.meter.Meter` next
to the running agent; the agent's :class:`MeteringComponent` publishes what
they record::

    from device_agent.metering.api import open_meter

    with open_meter(Path("/var/lib/agent/state")) as meter:
        meter.record("api_calls", 1)

The meter reads the device's manifest from the agent's trust state (read-only,
reloaded when the agent accepts a new manifest).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from device_agent.config import AgentConfig
from device_agent.errors import ConfigError, StateError
from device_agent.identity import IdentityStore
from device_agent.metering.buffer import BUFFER_FILE, BufferStats, UsageBuffer
from device_agent.metering.config import enabled_settings
from device_agent.metering.entitlements import Entitlements, ManifestView
from device_agent.metering.meter import Meter
from device_agent.storage import read_optional
from protocols import cbor
from protocols.errors import ProtocolError

BOOT_FILE = "boot.cbor"


def read_boot_epoch(state_dir: Path) -> int:
    """The agent's current boot epoch (``state_dir/boot.cbor``, written by the runner); 0 if none.

    Raises:
        StateError: the file exists but is not a boot counter.
    """
    raw = read_optional(state_dir / BOOT_FILE)
    if raw is None:
        return 0
    try:
        value = cbor.decode(raw)
    except ProtocolError as exc:
        raise StateError(f"corrupt boot epoch file: {exc}") from exc
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise StateError("corrupt boot epoch file: not a counter")
    return value


def open_buffer(state_dir: Path, *, max_records: int | None = None) -> UsageBuffer:
    """Open the agent's usage buffer, minting in the agent's current boot epoch or later.

    Raises:
        StateError: the buffer or the boot counter cannot be read.
    """
    buffer = UsageBuffer.open(state_dir / BUFFER_FILE, max_records=max_records)
    try:
        buffer.begin_epoch(read_boot_epoch(state_dir))
    except BaseException:
        buffer.close()
        raise
    return buffer


def open_meter(
    state_dir: Path,
    *,
    max_records: int | None = None,
    clock: Callable[[], float] = time.time,
    entitlements: Entitlements | None = None,
) -> Meter:
    """A meter recording into the agent's buffer in ``state_dir``.

    Args:
        state_dir: The agent's state directory (``[device] state_dir``).
        max_records: The buffer bound; ``None`` keeps the one the agent configured.
        clock: Unix time source for records and caps.
        entitlements: Where to read the manifest; default the agent's trust state.

    Raises:
        StateError: the device has not claimed an identity yet, or its state
            cannot be read.
    """
    if entitlements is None:
        identity = IdentityStore(state_dir).load()
        if identity is None:
            raise StateError("the device has not claimed an identity yet: nothing to meter")
        entitlements = ManifestView(state_dir, identity)
    return Meter(open_buffer(state_dir, max_records=max_records), entitlements, clock=clock)


def open_meter_for(config: AgentConfig, *, clock: Callable[[], float] = time.time) -> Meter:
    """:func:`open_meter` for an agent configuration with metering enabled.

    Raises:
        ConfigError: the configuration has no enabled ``[metering]`` table.
        StateError: as :func:`open_meter`.
    """
    settings = enabled_settings(config.sections)
    if settings is None:
        raise ConfigError("metering is not enabled: add a [metering] table to the agent config")
    return open_meter(config.state_dir, max_records=settings.max_records, clock=clock)


def buffer_stats(state_dir: Path) -> BufferStats:
    """The usage buffer's counters (pending, dropped, acknowledged, ...).

    Raises:
        StateError: the buffer cannot be read.
    """
    buffer = UsageBuffer.open(state_dir / BUFFER_FILE)
    try:
        return buffer.stats()
    finally:
        buffer.close()


__all__ = ["buffer_stats", "open_buffer", "open_meter", "open_meter_for", "read_boot_epoch"]
