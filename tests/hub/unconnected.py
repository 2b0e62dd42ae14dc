"""A :class:`HubMqttClient` that is never started: for tests of its bookkeeping and dispatch."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hub.mqtt.adapter import HubMqttClient
from protocols import topics


def unconnected_client(
    router: Any = None,
    *,
    filters: tuple[str, ...] = (topics.HUB_UP_FILTER,),
    on_acknowledged: Callable[[list[str]], None] | None = None,
) -> HubMqttClient:
    """A client for a broker that is never reached (port 1); ``router`` may be a fake."""
    return HubMqttClient(
        host="127.0.0.1",
        port=1,
        client_id="hub-test",
        username="hub-test",
        password="x",
        router=router,
        filters=filters,
        on_acknowledged=on_acknowledged,
    )
