"""How the simulator reaches the agent's optional session components.

The metering and firmware components come from
:func:`device_agent.components.default_components`, exactly as a real agent
builds them. The simulator drives them only through their public methods,
found here by name, so a device without a component (not built yet, or not
configured) is reported as such instead of being faked.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from device_agent.components import ComponentContext, SessionComponent, default_components

log = logging.getLogger(__name__)

METER_FEATURE = "api_calls"
"""The metered feature every simulated product has (usage goes to its meter)."""


def build(context: ComponentContext) -> list[SessionComponent]:
    """The real components for ``context``; none when the agent cannot build them."""
    try:
        return list(default_components(context))
    except Exception as exc:  # noqa: BLE001 - a component bug must not stop the fleet
        log.error("components unavailable for %s: %s", context.identity.device_id, exc)
        return []


def _find(components: Sequence[SessionComponent], *methods: str) -> Any | None:
    for component in components:
        if all(callable(getattr(component, name, None)) for name in methods):
            return component
    return None


def meter(components: Sequence[SessionComponent]) -> Any | None:
    """The metering component (it has ``record``), or ``None``."""
    return _find(components, "record", "tick")


def firmware(components: Sequence[SessionComponent]) -> Any | None:
    """The firmware component (it has ``installed_seq`` or ``status``), or ``None``."""
    for component in components:
        if hasattr(component, "installed_seq") or callable(getattr(component, "status", None)):
            return component
    return None


def buffered(components: Sequence[SessionComponent]) -> int | None:
    """Usage records still buffered on the device, if the meter says."""
    component = meter(components)
    if component is None:
        return None
    for name in ("pending_count", "buffered", "pending"):
        value = getattr(component, name, None)
        value = value() if callable(value) else value
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def record_usage(component: Any, *, meter_key: str, quantity: int, now: int) -> bool:
    """Hand one usage event to the metering component; whether it took it."""
    try:
        component.record(meter_key, quantity, now=now)
    except TypeError:
        component.record(meter_key, quantity, now)
    except Exception as exc:  # noqa: BLE001 - a refused record is data, not a crash
        log.warning("meter refused a record: %s", exc)
        return False
    return True
