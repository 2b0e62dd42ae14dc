"""A stopping hub never waits without bound: full publish window, open requests, a hung broker."""

from __future__ import annotations

import asyncio
import threading
import time

from fastapi import FastAPI

from hub.mqtt import adapter
from hub.mqtt.adapter import HubMqttClient
from hub.mqtt.outbound import Outbound
from hub.serve import api_config, stop_within
from hub.settings import Settings
from tests.hub.unconnected import unconnected_client


def _client() -> HubMqttClient:
    return unconnected_client()


def test_a_full_window_ends_publish_once_the_hub_stops(monkeypatch) -> None:
    monkeypatch.setattr(adapter, "WINDOW_POLL_SECONDS", 0.01)
    client = _client()
    sent: list[str] = []

    class Info:
        mid, rc = 1, 0

    def never_acknowledged(topic: str, *_args: object, **_kwargs: object) -> Info:
        sent.append(topic)  # no PUBACK ever frees the slot: the broker is gone
        return Info()

    client._client.publish = never_acknowledged  # type: ignore[method-assign]
    for _ in range(adapter.INFLIGHT_WINDOW - 1):
        client._window.acquire()  # one slot left
    messages = [Outbound(f"d/dev-{i}/down/x", b"x") for i in range(3)]
    worker = threading.Thread(target=client.publish, args=(messages,))
    worker.start()
    time.sleep(0.2)
    assert worker.is_alive() and sent == ["d/dev-0/down/x"]  # blocked on the full window
    client._stopping.set()
    worker.join(timeout=2)
    assert not worker.is_alive()
    assert sent == ["d/dev-0/down/x"]  # the rest dropped, not sent


def test_a_full_window_still_waits_while_the_hub_runs(monkeypatch) -> None:
    monkeypatch.setattr(adapter, "WINDOW_POLL_SECONDS", 0.01)
    client = _client()
    for _ in range(adapter.INFLIGHT_WINDOW):
        client._window.acquire()
    result: list[bool] = []
    worker = threading.Thread(target=lambda: result.append(client._acquire_slot()))
    worker.start()
    time.sleep(0.1)
    assert worker.is_alive()  # polling, not giving up
    client._window.release()  # a PUBACK
    worker.join(timeout=2)
    assert result == [True]


def test_the_api_cuts_open_requests_after_the_shutdown_timeout(tmp_path) -> None:
    settings = Settings(data_dir=tmp_path, shutdown_timeout_seconds=7)
    assert api_config(FastAPI(), settings).timeout_graceful_shutdown == 7


def test_a_broker_that_hangs_on_stop_is_left_after_the_timeout() -> None:
    started = time.monotonic()

    async def hangs() -> None:
        await asyncio.sleep(60)

    asyncio.run(stop_within(hangs, 0.1))
    assert time.monotonic() - started < 5


def test_a_broker_that_stops_in_time_is_awaited() -> None:
    stopped: list[bool] = []

    async def stops() -> None:
        await asyncio.sleep(0.01)
        stopped.append(True)

    asyncio.run(stop_within(stops, 5))
    assert stopped == [True]


def test_a_slow_broker_stop_never_keeps_the_other_from_starting() -> None:
    from hub.serve import stop_all

    started: list[str] = []
    release = threading.Event()

    def slow_claims() -> None:
        started.append("claims")
        release.wait(5)

    def devices() -> None:
        started.append("devices")

    async def main() -> None:
        await stop_within(lambda: stop_all([slow_claims, devices]), 0.2)
        assert sorted(started) == ["claims", "devices"]  # both begun despite the time-out
        release.set()

    asyncio.run(main())
