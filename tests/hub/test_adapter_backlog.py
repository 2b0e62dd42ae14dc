"""The dispatcher serves a router's held-over work at once, without waiting for a message."""

from __future__ import annotations

import threading
import time

from hub.inbound import BatchResult
from hub.mqtt.adapter import HubMqttClient
from hub.mqtt.outbound import Inbound
from protocols import topics
from tests.hub.unconnected import unconnected_client


class _Router:
    """A message leaves work for ``calls`` more calls; records every batch it is given."""

    def __init__(self, calls: int) -> None:
        self.calls = calls
        self.held = 0
        self.batches: list[list[Inbound]] = []
        self.drained = threading.Event()

    @property
    def has_backlog(self) -> bool:
        return self.held > 0

    def handle_batch(self, batch: list[Inbound]) -> BatchResult:
        self.batches.append(list(batch))
        self.held = self.calls
        return BatchResult(outbound=[])

    def serve_backlog(self) -> BatchResult:
        self.batches.append([])
        self.held = max(0, self.held - 1)
        if not self.held:
            self.drained.set()
        return BatchResult(outbound=[])


def _client(router: _Router, filters: tuple[str, ...] = (topics.HUB_UP_FILTER,)) -> HubMqttClient:
    return unconnected_client(router, filters=filters)


def _stop(client: HubMqttClient) -> None:
    client._stopping.set()
    client._inbox.put(None)
    client._dispatcher.join(timeout=5)
    assert not client._dispatcher.is_alive()


def test_held_over_work_runs_in_empty_batches_until_drained() -> None:
    router = _Router(calls=2)
    client = _client(router)
    client._dispatcher.start()
    try:
        started = time.monotonic()
        client._inbox.put(Inbound("d/dev-a/up/firmware", b"x"))
        assert router.drained.wait(2)
        assert time.monotonic() - started < 0.4  # not on the 0.5 s idle poll
        time.sleep(0.05)
        assert [len(b) for b in router.batches] == [1, 0, 0]  # the message, then the backlog
    finally:
        _stop(client)
    assert len(router.batches) == 3  # no empty batch once the backlog is gone


def test_without_a_backlog_an_idle_dispatcher_runs_no_batch() -> None:
    router = _Router(calls=0)
    client = _client(router)
    client._dispatcher.start()
    try:
        time.sleep(0.6)
    finally:
        _stop(client)
    assert router.batches == []


def test_the_claim_brokers_client_never_serves_the_backlog() -> None:
    # Its replies would be device messages published to the wrong broker.
    router = _Router(calls=2)
    client = _client(router, filters=(topics.HUB_CLAIM_FILTER,))
    client._dispatcher.start()
    try:
        client._inbox.put(Inbound("c/x/req", b"x"))
        time.sleep(0.3)
    finally:
        _stop(client)
    assert [len(b) for b in router.batches] == [1]


class _BusyRouter(_Router):
    """The first batch leaves one call of held work; every batch takes a few milliseconds."""

    def handle_batch(self, batch: list[Inbound]) -> BatchResult:
        if not self.batches:
            self.held = 1
        self.batches.append(list(batch))
        time.sleep(0.005)
        return BatchResult(outbound=[])


def test_a_steady_stream_of_other_messages_does_not_starve_the_backlog() -> None:
    router = _BusyRouter(calls=1)
    client = _client(router)
    stop = threading.Event()

    def feed() -> None:
        for n in range(2000):  # bounded: ~1 s at most
            if stop.is_set():
                return
            client._inbox.put(Inbound(f"d/dev-{n}/up/usage", b"x"))
            time.sleep(0.0005)

    feeder = threading.Thread(target=feed)
    feeder.start()
    client._dispatcher.start()
    try:
        assert router.drained.wait(2)
        assert feeder.is_alive()  # served while messages were still coming
    finally:
        stop.set()
        feeder.join(timeout=5)
        _stop(client)
    sizes = [len(b) for b in router.batches]
    assert sizes[0] > 0 and sizes[1] == 0  # the backlog right after the first batch
