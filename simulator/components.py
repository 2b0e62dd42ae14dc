"""The agent's optional session components, as a simulated device runs them.

The components come from :func:`device_agent.components.default_components`,
built from the ``[metering]`` and ``[firmware]`` tables exactly as a real
agent builds them. The device application's side of metering is the real
:class:`device_agent.metering.meter.Meter`, sharing the component's durable
buffer (as an application thread of a real device would); it reads the
manifest from the session's trust store in memory instead of re-reading
``trust.cbor`` from disk.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from device_agent import trust
from device_agent.components import ComponentContext, SessionComponent, default_components
from device_agent.errors import AgentError
from device_agent.firmware.component import FirmwareComponent
from device_agent.metering.component import MeteringComponent
from device_agent.metering.meter import Meter
from device_agent.trust_store import TrustStore
from protocols.manifest import FeatureEntry

log = logging.getLogger(__name__)

METER_FEATURE = "api_calls"
"""The metered feature every simulated product has (usage goes to its meter)."""


class TrustEntitlements:
    """The meter's view of the entitlements, from the session's own trust store."""

    def __init__(self, store: TrustStore) -> None:
        """Read from ``store`` (the object the session accepts manifests into)."""
        self._store = store

    def entry(self, key: str, *, now: int) -> FeatureEntry | None:
        """The feature's entry if it is enabled at ``now``, else ``None``."""
        entry = self._store.effective_features(now=now).get(key)
        return entry if entry is not None and entry.enabled else None

    def effective_now(self, now: int) -> int:
        """``max(now, the latest signed time)``."""
        return trust.effective_now(self._store.state, now)


def build(context: ComponentContext) -> list[SessionComponent]:
    """The real components for ``context``; none when the agent cannot build them."""
    try:
        return list(default_components(context))
    except AgentError as exc:
        log.error("components unavailable for %s: %s", context.identity.device_id, exc)
        return []


def metering(components: Sequence[SessionComponent]) -> MeteringComponent | None:
    """The metering component, if the session runs one."""
    return next((c for c in components if isinstance(c, MeteringComponent)), None)


def firmware(components: Sequence[SessionComponent]) -> FirmwareComponent | None:
    """The firmware component, if the session runs one."""
    return next((c for c in components if isinstance(c, FirmwareComponent)), None)


def meter_for(
    components: Sequence[SessionComponent], store: TrustStore, clock: Callable[[], float]
) -> Meter | None:
    """The device application's meter over the session's buffer, or ``None``."""
    component = metering(components)
    if component is None:
        return None
    return Meter(component.buffer, TrustEntitlements(store), clock=clock)


def buffered(components: Sequence[SessionComponent]) -> int | None:
    """Usage records still in the device's buffer (``None``: no metering)."""
    component = metering(components)
    if component is None:
        return None
    try:
        return int(component.buffer.stats().pending)
    except AgentError:
        return None


def close(components: Sequence[SessionComponent]) -> None:
    """Release what the components hold open (the usage buffer's database)."""
    component = metering(components)
    if component is not None:
        component.buffer.close()


def record_usage(meter: Meter, *, quantity: int, now: int) -> bool:
    """One usage event through the real meter; whether it was recorded."""
    try:
        meter.record(METER_FEATURE, quantity, now=now)
    except AgentError as exc:
        log.debug("usage refused: %s", exc)
        return False
    return True


def describe(component: Any) -> str:
    """A short name for logs."""
    return type(component).__name__
