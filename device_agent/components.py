"""Optional parts of a device session: metering, firmware updates.

A :class:`SessionComponent` adds behaviour to :class:`~device_agent.session.DeviceSession`
without the session knowing it: it speaks on connect, handles the ``down``
messages it owns, and gets a ``tick`` on every pass of the runner's loop (to
flush buffers, retry requests, time out steps). Like the session it is sans-IO:
time comes in as ``now`` and what to publish goes out as
:class:`~device_agent.session.Outgoing`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from device_agent.config import AgentConfig
from device_agent.identity import Identity
from device_agent.outgoing import Outgoing
from device_agent.trust_store import TrustStore
from protocols.messages import Message


class SessionComponent(Protocol):
    """One optional part of a device session."""

    def on_connected(self, *, now: int) -> list[Outgoing]:
        """Called after every (re)connect, after the hello: replay, resume."""
        ...

    def on_message(self, message: Message, *, now: int) -> list[Outgoing] | None:
        """Handle ``message`` if it is this component's; ``None`` when it is not."""
        ...

    def tick(self, *, now: int) -> list[Outgoing]:
        """Periodic work while connected (flush, retry, time out)."""
        ...


@dataclass(frozen=True, slots=True)
class ComponentContext:
    """What a component factory may use: the device's config, identity and trust.

    ``boot_epoch`` is this run's boot counter (the session's), the first part of
    every idempotency key the device mints.
    """

    config: AgentConfig
    identity: Identity
    trust: TrustStore
    state_dir: Path
    clock: Callable[[], float]
    boot_epoch: int = 0


def default_components(context: ComponentContext) -> list[SessionComponent]:
    """The components a real agent runs, as its configuration enables them."""
    # Imported here: the component packages import this module's protocol.
    from device_agent.firmware import wiring as firmware_wiring  # noqa: PLC0415
    from device_agent.metering import wiring as metering_wiring  # noqa: PLC0415

    return [*metering_wiring.components(context), *firmware_wiring.components(context)]
