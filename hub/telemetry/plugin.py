"""How the telemetry package plugs into the hub (see :mod:`hub.plugins`)."""

from __future__ import annotations

from hub.plugins import HubPlugin

PLUGIN = HubPlugin(name="telemetry", models_module="hub.telemetry.models")
