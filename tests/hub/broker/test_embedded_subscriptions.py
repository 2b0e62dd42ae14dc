"""The embedded broker's subscription table survives subscribes and unsubscribes mid-broadcast.

amqtt 0.12 walks its ``topic filter -> subscribers`` table with ``await`` inside
the loop. Here the ACL check that runs at each subscriber (the first ``await``)
adds and removes other subscriptions, as connections coming and going do on a
busy broker. Stock amqtt abandons the broadcast with ``RuntimeError``; the
hub's broker serves every subscriber that was there when the broadcast began.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import pytest
from amqtt.broker import Broker

from hub.broker.embedded import _GuardedBroker, _SnapshotList, _SubscriptionTable

TOPIC = "d/dev-1/down/manifest"
CONFIG = {"listeners": {"default": {"type": "tcp", "bind": "127.0.0.1:0"}}, "plugins": {}}
MATCHING = ["d/dev-1/down/#", "d/+/down/manifest", "d/dev-1/down/manifest"]


@dataclass
class _Transitions:
    state: str = "connected"


@dataclass
class _Session:
    client_id: str
    clean_session: bool = True
    is_anonymous: bool = False
    transitions: _Transitions = field(default_factory=_Transitions)


@dataclass
class _Handler:
    sent: list[str]
    client_id: str

    async def mqtt_publish(self, topic: str, data: bytes, qos: int, retain: bool) -> None:
        self.sent.append(self.client_id)


def _churning(broker: Any, sent: list[str]) -> None:
    """Fill ``broker``'s table; its per-subscriber ACL check changes the table each time."""
    for index, topic_filter in enumerate(MATCHING):
        broker._subscriptions[topic_filter] = [(_Session(f"sub-{index}"), 1)]
    broker._subscriptions["d/dev-1/down/manifest"].append((_Session("sub-extra"), 1))
    for index in range(50):  # unrelated devices' filters, as on a real fleet
        broker._subscriptions[f"d/other-{index}/down/#"] = [(_Session(f"other-{index}"), 1)]
    calls = 0

    async def topic_filtering(session: Any, topic: str, action: Any) -> bool:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0)
        # two clients connect and subscribe, one disconnects and unsubscribes
        for new in (f"new-{calls}", f"newer-{calls}"):
            broker._subscriptions[f"d/{new}/down/#"] = [(_Session(new), 1)]
        broker._subscriptions.pop(f"d/other-{calls}/down/#", None)
        subscribers = broker._subscriptions["d/dev-1/down/manifest"]
        if session.client_id == "sub-2" and len(subscribers) == 2:
            subscribers.pop(0)  # sub-2 unsubscribes while its list is being walked
        return True

    broker._topic_filtering = topic_filtering
    broker._get_handler = lambda session: _Handler(sent, session.client_id)


async def _broadcast(broker: Any) -> None:
    running: deque[asyncio.Task[Any]] = deque()
    await broker._broadcast_queue.put(
        {"topic": TOPIC, "data": b"manifest", "session": _Session("hub"), "qos": 1}
    )
    await broker._run_broadcast(running)
    await asyncio.gather(*running)


def test_a_broadcast_reaches_every_subscriber_while_the_table_changes() -> None:
    async def run() -> list[str]:
        broker = _GuardedBroker(CONFIG, max_payload_bytes=1024)
        sent: list[str] = []
        _churning(broker, sent)
        await _broadcast(broker)
        return sent

    sent = asyncio.run(run())
    assert sorted(sent) == ["sub-0", "sub-1", "sub-2", "sub-extra"]


def test_stock_amqtt_abandons_that_broadcast() -> None:
    """Why the table is replaced: the same churn breaks amqtt's own loop."""

    async def run() -> None:
        broker = Broker(CONFIG)
        _churning(broker, [])
        await _broadcast(broker)

    with pytest.raises(RuntimeError, match="dictionary changed size during iteration"):
        asyncio.run(run())


def test_table_iterates_over_snapshots_and_wraps_subscriber_lists() -> None:
    table = _SubscriptionTable()
    table["a"] = [1]
    table["b"] = [2, 3]
    assert all(isinstance(value, _SnapshotList) for value in table.values())
    for key in table:  # deleting and adding while walking the keys
        del table[key]
        table[key + "!"] = []
    assert sorted(table) == ["a!", "b!"]
    table = _SubscriptionTable()
    table.update({"x": [1]}, y=[9])
    assert isinstance(table.setdefault("z"), _SnapshotList)
    assert table.setdefault("x", [5]) == [1]
    assert all(isinstance(value, _SnapshotList) for value in table.values())
    del table["y"], table["z"]
    for key, _value in table.items():
        table[key * 2] = []
    assert sorted(table) == ["x", "xx"]
    subscribers = table["x"]
    subscribers.extend([2, 3])
    seen = []
    for value in subscribers:  # removing the current element skips nobody
        seen.append(value)
        if value == 1:
            subscribers.remove(1)
    assert seen == [1, 2, 3] and subscribers == [2, 3]
