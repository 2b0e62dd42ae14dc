"""The adapter's PUBACK bookkeeping settles both orders of publish-return and PUBACK.

paho may send a QoS 1 publish and receive its PUBACK before ``publish`` returns
the mid to us; the adapter must then still report the delivery exactly once,
and never hold its own lock while calling into paho (that deadlocked).
"""

from __future__ import annotations

from hub.mqtt.adapter import HubMqttClient
from tests.hub.unconnected import unconnected_client


def _client(acknowledged: list[list[str]]) -> HubMqttClient:
    return unconnected_client(on_acknowledged=acknowledged.append)


def test_puback_after_record_and_before_record_both_count_once():
    acknowledged: list[list[str]] = []
    client = _client(acknowledged)
    client._window.acquire()
    client._window.acquire()
    client._record(1, "dev-a")  # normal order: recorded, then acked
    client._on_publish(None, None, 1, None, None)
    client._on_publish(None, None, 2, None, None)  # early: acked before recorded
    client._record(2, "dev-b")
    client._flush_acknowledged()
    assert acknowledged == [["dev-a", "dev-b"]]
    assert client._in_flight == {} and client._early_acks == set()


def test_untracked_publishes_leave_nothing_behind():
    acknowledged: list[list[str]] = []
    client = _client(acknowledged)
    client._window.acquire()
    client._window.acquire()
    client._on_publish(None, None, 7, None, None)
    client._record(7, None)
    client._record(8, None)
    client._on_publish(None, None, 8, None, None)
    client._flush_acknowledged()
    assert acknowledged == []
    assert client._in_flight == {} and client._early_acks == set()


def test_publish_does_not_hold_the_tracking_lock_while_calling_paho():
    client = _client([])
    held: list[bool] = []

    class Info:
        mid, rc = 3, 0

    def fake_publish(*_args, **_kwargs):
        held.append(client._track_lock.locked())
        client._on_publish(None, None, 3, None, None)  # as if the PUBACK arrived at once
        return Info()

    client._client.publish = fake_publish  # type: ignore[method-assign]
    from hub.mqtt.outbound import Outbound

    client.publish([Outbound("d/dev-a/down/manifest", b"x", track="dev-a")])
    assert held == [False]
    assert client._acknowledged == ["dev-a"]


def test_the_adapter_window_alone_bounds_publishing(monkeypatch):
    # paho's own in-flight limit is off (it scans every outstanding message on
    # each PUBACK); the adapter's semaphore blocks the caller instead.
    import threading

    from hub.mqtt import adapter
    from hub.mqtt.outbound import Outbound

    monkeypatch.setattr(adapter, "INFLIGHT_WINDOW", 2)
    client = _client([])
    assert client._client._max_inflight_messages == adapter.PAHO_INFLIGHT_LIMIT == 0
    mids = iter(range(1, 100))

    class Info:
        def __init__(self) -> None:
            self.mid, self.rc = next(mids), 0

    client._client.publish = lambda *_a, **_k: Info()  # type: ignore[method-assign]
    messages = [Outbound(f"d/dev-{i}/down/manifest", b"x", track=f"dev-{i}") for i in range(3)]
    done = threading.Event()
    worker = threading.Thread(target=lambda: (client.publish(messages), done.set()), daemon=True)
    worker.start()
    assert not done.wait(0.3)  # two in flight, the third waits for a PUBACK
    client._on_publish(None, None, 1, None, None)
    assert done.wait(5)
    worker.join(5)
    assert client._acknowledged == ["dev-0"] and sorted(client._in_flight) == [2, 3]
