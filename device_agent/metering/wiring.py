"""Which usage metering (docs/metering.md) components a device session runs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from device_agent.metering.api import open_buffer
from device_agent.metering.component import MeteringComponent
from device_agent.metering.config import enabled_settings

if TYPE_CHECKING:
    from device_agent.components import ComponentContext, SessionComponent


def components(context: ComponentContext) -> list[SessionComponent]:
    """The metering component when the config has an enabled ``[metering]`` table.

    The buffer mints keys in the agent's boot epoch: the runner increments
    ``boot.cbor`` before it builds the components, so the value read here is
    the session's ``boot_epoch``.

    Raises:
        ConfigError: the ``[metering]`` table is invalid.
        StateError: the usage buffer cannot be opened.
    """
    settings = enabled_settings(context.config.sections)
    if settings is None:
        return []
    buffer = open_buffer(context.state_dir, max_records=settings.max_records)
    return [MeteringComponent(buffer, device_id=context.identity.device_id, settings=settings)]
