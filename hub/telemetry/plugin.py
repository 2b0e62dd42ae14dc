"""How the telemetry package plugs into the hub (see :mod:`hub.plugins`).

Tables: :mod:`hub.telemetry.models`; inbound: the ``usage`` batch handler
(:class:`~hub.telemetry.ingest.UsageHandler`, default policy); REST: usage
and meters routers under ``/api/v1``.
"""

from __future__ import annotations

from collections.abc import Sequence

from hub.plugins import BatchHandler, HubContext, HubPlugin
from hub.telemetry.ingest import UsageHandler
from hub.telemetry.routers import ROUTERS


def _inbound(_context: HubContext) -> Sequence[BatchHandler]:
    return [UsageHandler()]


PLUGIN = HubPlugin(
    name="telemetry", models_module="hub.telemetry.models", routers=ROUTERS, inbound=_inbound
)
