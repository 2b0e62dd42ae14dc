"""Feature packages plug into the hub through one declaration each.

A flow step that has its own tables, REST routes, device topics and periodic
jobs (usage metering in :mod:`hub.telemetry`, firmware in :mod:`hub.firmware`)
declares them in a :class:`HubPlugin`; the app factory, the inbound router, the
scheduler and the model registry read them from :func:`load_plugins`. The core
(registry, entitlements, manifests) stays wired by hand.

Inbound handlers are *batch* handlers: the router collects every message of a
handler's topic kind from one MQTT batch (senders already checked to be claimed
devices; identity is the topic's, never the payload's) and calls the handler
once inside the batch's transaction. A handler must not fail half way: it
validates before it writes and answers bad items with typed error replies. An
exception fails the whole batch, which the adapter then retries.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

from fastapi import APIRouter
from sqlalchemy.orm import Session, sessionmaker

from hub.mqtt.outbound import Outbound
from protocols.messages import Message

if TYPE_CHECKING:
    from hub.keys import HubKeys
    from hub.settings import Settings

# Modules declaring a ``PLUGIN``; each is imported lazily by load_plugins().
PLUGIN_MODULES: tuple[str, ...] = (
    "hub.telemetry.plugin",
    "hub.billing.plugin",
    "hub.firmware.plugin",
)


@dataclass(frozen=True, slots=True)
class HubContext:
    """What a plugin's handlers and jobs may use at run time.

    ``publish`` sends messages to devices (after the caller's commit); it is
    late-bound to the hub's MQTT client by ``hub serve``.
    """

    settings: Settings
    session_factory: sessionmaker[Session]
    keys: HubKeys
    clock: Callable[[], datetime]
    publish: Callable[[Sequence[Outbound]], None]


class BatchHandler(Protocol):
    """Handles every message of one device-to-hub topic kind in a batch."""

    @property
    def kind(self) -> str:
        """The ``d/{id}/up/{kind}`` kind this handler owns."""
        ...

    def handle(
        self, session: Session, items: Sequence[tuple[str, Message]], now: datetime
    ) -> list[Outbound]:
        """Apply ``(device_id, message)`` pairs in arrival order; returns replies."""
        ...


@dataclass(frozen=True, slots=True)
class PeriodicJob:
    """A scheduler job: ``run`` every ``seconds`` (idempotent, so workers may overlap)."""

    job_id: str
    seconds: int
    run: Callable[[], object]


@dataclass(frozen=True, slots=True)
class HubPlugin:
    """One feature package's contribution to the hub."""

    name: str
    models_module: str | None = None
    routers: Sequence[APIRouter] = ()
    inbound: Callable[[HubContext], Sequence[BatchHandler]] | None = None
    jobs: Callable[[HubContext], Sequence[PeriodicJob]] | None = None
    on_start: Callable[[HubContext], None] | None = None


def load_plugins(modules: Sequence[str] = PLUGIN_MODULES) -> tuple[HubPlugin, ...]:
    """Import each plugin module and return its ``PLUGIN``, in order."""
    plugins: list[HubPlugin] = []
    for name in modules:
        plugin = importlib.import_module(name).PLUGIN
        if not isinstance(plugin, HubPlugin):
            raise TypeError(f"{name}.PLUGIN is not a HubPlugin")
        plugins.append(plugin)
    return tuple(plugins)


def import_plugin_models(plugins: Sequence[HubPlugin]) -> None:
    """Import every plugin's model module, so ``Base.metadata`` holds its tables."""
    for plugin in plugins:
        if plugin.models_module:
            importlib.import_module(plugin.models_module)


def inbound_handlers(plugins: Sequence[HubPlugin], context: HubContext) -> list[BatchHandler]:
    """Every plugin's batch handlers; two handlers for one kind is an error."""
    handlers: list[BatchHandler] = []
    for plugin in plugins:
        if plugin.inbound is not None:
            handlers.extend(plugin.inbound(context))
    kinds = [handler.kind for handler in handlers]
    if len(kinds) != len(set(kinds)):
        raise ValueError(f"two inbound handlers for one topic kind: {sorted(kinds)}")
    return handlers


def periodic_jobs(plugins: Sequence[HubPlugin], context: HubContext) -> list[PeriodicJob]:
    """Every plugin's periodic jobs."""
    jobs: list[PeriodicJob] = []
    for plugin in plugins:
        if plugin.jobs is not None:
            jobs.extend(plugin.jobs(context))
    return jobs
