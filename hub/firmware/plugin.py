"""How the firmware package plugs into the hub (see :mod:`hub.plugins`)."""

from __future__ import annotations

from hub.plugins import HubPlugin

PLUGIN = HubPlugin(name="firmware", models_module="hub.firmware.tables")
