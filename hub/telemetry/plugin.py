"""How the telemetry package plugs into the hub (see :mod:`hub.plugins`).

Tables: :mod:`hub.telemetry.models`; inbound: the ``usage`` batch handler
(:class:`~hub.telemetry.ingest.UsageHandler`, skew window from the settings); REST: usage
and meters routers under ``/api/v1``.
"""

from __future__ import annotations

from collections.abc import Sequence

from hub.plugins import BatchHandler, HubContext, HubPlugin
from hub.settings import Settings
from hub.telemetry.ingest import UsageHandler
from hub.telemetry.policy import UsagePolicy
from hub.telemetry.routers import ROUTERS


def usage_policy(settings: Settings) -> UsagePolicy:
    """The skew window configured for this hub (``HUB_USAGE_*``)."""
    return UsagePolicy(
        future_skew_seconds=settings.usage_future_skew_seconds,
        max_age_seconds=settings.usage_max_age_seconds,
    )


def _inbound(context: HubContext) -> Sequence[BatchHandler]:
    return [UsageHandler(usage_policy(context.settings))]


PLUGIN = HubPlugin(
    name="telemetry", models_module="hub.telemetry.models", routers=ROUTERS, inbound=_inbound
)
