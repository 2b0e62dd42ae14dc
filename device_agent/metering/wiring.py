"""Which usage metering (docs/metering.md) components a device session runs."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from device_agent.components import ComponentContext, SessionComponent


def components(context: ComponentContext) -> list[SessionComponent]:
    """The components this package adds to a session (none configured: none)."""
    del context
    return []
