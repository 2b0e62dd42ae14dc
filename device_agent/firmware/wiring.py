"""Which firmware components (docs/firmware-agent.md) a device session runs.

With a ``[firmware]`` table in the agent's configuration the session gets one
:class:`~device_agent.firmware.component.FirmwareComponent` working in
``state_dir/firmware`` (provisioned with the factory image on first start);
without one it gets none.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from device_agent.errors import ConfigError, StateError
from device_agent.firmware.component import FirmwareComponent, HealthCheck, provision
from device_agent.firmware.http import HttpRangeFetcher
from device_agent.firmware.processor import firmware_keys
from device_agent.firmware.settings import FirmwareSettings, parse_settings
from device_agent.firmware.slots import BOOT_FILE

if TYPE_CHECKING:
    from device_agent.components import ComponentContext, SessionComponent

FIRMWARE_DIR = "firmware"
SECTION = "firmware"


def factory_image(settings: FirmwareSettings, serial: str) -> bytes:
    """The image provisioned into slot ``a``: the configured file or a placeholder.

    Raises:
        ConfigError: the configured file cannot be read or is empty.
    """
    if settings.factory_image is None:
        return f"factory image of {serial}\n".encode()
    try:
        image = settings.factory_image.read_bytes()
    except OSError as exc:
        raise ConfigError(f"[firmware] factory_image: {exc}") from exc
    if not image:
        raise ConfigError("[firmware] factory_image is empty")
    return image


def firmware_dir(state_dir: Path) -> Path:
    """Where the slots and the install state live."""
    return state_dir / FIRMWARE_DIR


def build(
    context: ComponentContext,
    settings: FirmwareSettings,
    *,
    health: HealthCheck | None = None,
) -> FirmwareComponent:
    """The firmware component of one device (provisioning its directory if new).

    Args:
        context: The session's config, identity, trust store, state dir and clock.
        settings: The validated ``[firmware]`` table.
        health: Overrides the configured (simulated) health check; the fleet
            simulator and tests inject failures here.

    Raises:
        ConfigError: the factory image cannot be read.
        StateError: the firmware directory cannot be provisioned or is corrupt.
    """
    root = firmware_dir(context.state_dir)
    if not (root / BOOT_FILE).exists():
        image = factory_image(settings, context.config.serial)
        provision(root, image, sequence=settings.factory_sequence)
    fetcher = None
    if settings.transport == "http" and settings.http_url is not None:
        fetcher = HttpRangeFetcher(
            settings.http_url,
            username=context.identity.mqtt_username,
            password=context.identity.mqtt_password,
        )
    trust = context.trust
    return FirmwareComponent(
        device_id=context.identity.device_id,
        root=root,
        settings=settings,
        keys=lambda: firmware_keys(trust.state),
        health=health,
        fetcher=fetcher,
        now=int(context.clock()),
    )


def components(context: ComponentContext) -> list[SessionComponent]:
    """The components this package adds to a session (no ``[firmware]`` table: none).

    Raises:
        ConfigError: the ``[firmware]`` table is invalid.
        StateError: the firmware directory is corrupt.
    """
    table = context.config.sections.get(SECTION)
    if table is None:
        return []
    settings = parse_settings(table, base=context.config.state_dir)
    try:
        return [build(context, settings)]
    except StateError as exc:
        raise StateError(f"firmware: {exc}") from exc
