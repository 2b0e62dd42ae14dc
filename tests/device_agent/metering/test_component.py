"""The publishing component: replay, batching, window, retry, delete on ack, error policy."""

import logging

import pytest

from device_agent.identity import Identity
from device_agent.session import DeviceSession
from protocols import cbor
from protocols.messages import ErrorReply, encode_message
from protocols.usage_messages import DEVICE_BATCH_BYTES, UsageAck
from tests.device_agent.metering.harness import (
    DEV,
    T0,
    USAGE_TOPIC,
    FakeHub,
    ack,
    batch_of,
    bulk_append,
    component,
    keys_of,
    open_buffer,
)


@pytest.fixture
def buffer(tmp_path):
    buffer = open_buffer(tmp_path)
    buffer.begin_epoch(1)
    yield buffer
    buffer.close()


def fill(buffer, count, **extra):
    return bulk_append(buffer, count, extra.get("meter", "m"), extra.get("dim"))


def error(code="payload_too_large"):
    return ErrorReply(code=code, message="refused", ref=USAGE_TOPIC)


def test_connect_replays_everything_oldest_first_and_deletes_nothing(buffer):
    keys = fill(buffer, 2500)
    out = component(buffer).on_connected(now=T0)
    assert [len(batch_of(o).records) for o in out] == [1000, 1000, 500]
    assert keys_of(out) == keys
    assert buffer.stats().pending == 2500


def test_batches_stay_within_the_byte_limit(buffer):
    fill(buffer, 1000, meter="é" * 64, dim="ü" * 64)
    out = component(buffer, max_in_flight=16).on_connected(now=T0)
    assert len(out) > 1
    assert all(len(o.payload) <= DEVICE_BATCH_BYTES for o in out)
    assert sum(len(batch_of(o).records) for o in out) == 1000


def test_the_window_bounds_unanswered_batches_and_acks_open_it(buffer):
    fill(buffer, 5000)
    hub = FakeHub()
    metering = component(buffer, max_in_flight=2)
    out = metering.on_connected(now=T0)
    assert len(out) == 2 and metering.in_flight == 2
    assert metering.tick(now=T0 + 1) == []
    more = metering.on_message(hub.receive(out[0]), now=T0 + 1)
    assert len(more) == 1 and keys_of(more)[0] == (1, 2001)
    assert buffer.stats().pending == 4000


def test_acks_delete_only_what_they_answer(buffer):
    fill(buffer, 3)
    metering = component(buffer)
    metering.on_connected(now=T0)
    assert buffer.stats().pending == 3
    metering.on_message(ack((1, 2), code="quarantined"), now=T0)
    assert [r.key for r in buffer.pending()] == [(1, 1), (1, 3)]
    assert metering.counters.codes == {"quarantined": 1}
    assert metering.in_flight == 1  # the batch waits for its other keys


def test_duplicate_and_unknown_acks_are_harmless(buffer):
    fill(buffer, 2)
    metering = component(buffer)
    metering.on_connected(now=T0)
    metering.on_message(ack((1, 1)), now=T0)
    metering.on_message(ack((1, 1)), now=T0)
    metering.on_message(ack((7, 1), (1, 99)), now=T0)
    assert [r.key for r in buffer.pending()] == [(1, 2)]
    assert metering.counters.acked == 1 and metering.counters.unknown_acks == 3


def test_new_records_go_out_full_at_once_partial_after_the_flush_interval(buffer):
    metering = component(buffer, batch_max_records=10, flush_seconds=5)
    assert metering.on_connected(now=T0) == []
    fill(buffer, 3)
    first = metering.tick(now=T0)
    assert keys_of(first) == [(1, 1), (1, 2), (1, 3)]  # nothing partial sent yet
    fill(buffer, 2)
    assert metering.tick(now=T0 + 2) == []
    assert keys_of(metering.tick(now=T0 + 5)) == [(1, 4), (1, 5)]
    fill(buffer, 10)
    assert keys_of(metering.tick(now=T0 + 6)) == [(1, seq) for seq in range(6, 16)]


def test_unanswered_batches_are_resent_with_backoff(buffer):
    fill(buffer, 2)
    metering = component(buffer, retry_seconds=10)
    first = metering.on_connected(now=T0)
    assert metering.tick(now=T0 + 9) == []
    again = metering.tick(now=T0 + 10)
    assert keys_of(again) == keys_of(first)
    assert metering.tick(now=T0 + 29) == []  # second wait is 20 s
    assert keys_of(metering.tick(now=T0 + 30)) == [(1, 1), (1, 2)]
    metering.on_message(ack((1, 1)), now=T0 + 31)
    assert keys_of(metering.tick(now=T0 + 30 + 40)) == [(1, 2)]  # only what is left
    assert metering.counters.resent == 3


def test_a_reconnect_replays_what_was_in_flight(buffer):
    fill(buffer, 3)
    hub = FakeHub()
    metering = component(buffer)
    lost = metering.on_connected(now=T0)  # the connection drops: no ack comes
    replay = metering.on_connected(now=T0 + 1)
    assert keys_of(replay) == keys_of(lost)
    metering.on_message(hub.receive(lost[0]), now=T0 + 1)  # late ack of the old copy
    assert buffer.stats().pending == 0
    answer = hub.receive(replay[0])
    assert {r.code for r in answer.results} == {"duplicate"}
    metering.on_message(answer, now=T0 + 2)
    assert metering.in_flight == 0 and len(hub.stored) == 3


def test_an_error_on_the_only_batch_splits_it(buffer):
    fill(buffer, 8)
    metering = component(buffer, batch_max_records=8)
    metering.on_connected(now=T0)
    halves = metering.on_message(error(), now=T0)
    assert keys_of(halves) == [(1, s) for s in range(1, 5)]
    assert metering.in_flight == 1
    # A clean answer doubles the size back and restores the window.
    rest = metering.on_message(ack(*[(1, s) for s in range(1, 5)]), now=T0)
    assert keys_of(rest) == [(1, s) for s in range(5, 9)]


def test_an_error_with_several_batches_in_flight_isolates_from_the_oldest(buffer):
    fill(buffer, 30)
    metering = component(buffer, batch_max_records=10)
    metering.on_connected(now=T0)
    assert metering.in_flight == 3
    retry = metering.on_message(error(), now=T0)
    assert keys_of(retry) == [(1, s) for s in range(1, 6)]
    assert metering.in_flight == 1


def test_a_record_refused_alone_twice_is_discarded_and_the_rest_flows(buffer, caplog):
    fill(buffer, 4)
    metering = component(buffer, batch_max_records=4)
    hub = FakeHub()
    poison = (1, 3)
    out = metering.on_connected(now=T0)
    sent = 0
    with caplog.at_level(logging.ERROR):
        while out and sent < 50:
            sent += 1
            (batch,) = out
            if poison in keys_of(out):
                out = metering.on_message(error(), now=T0)
            else:
                out = metering.on_message(hub.receive(batch), now=T0)
    assert sorted(hub.stored) == [(1, 1), (1, 2), (1, 4)]
    assert buffer.stats().pending == 0 and buffer.stats().discarded == 1
    assert metering.counters.discarded == 1
    assert "discarded" in caplog.text


def test_errors_about_other_topics_are_not_ours(buffer):
    fill(buffer, 2)
    metering = component(buffer)
    metering.on_connected(now=T0)
    other = ErrorReply(code="x", message="y", ref=f"d/{DEV}/up/hello")
    assert metering.on_message(other, now=T0) is None
    assert metering.in_flight == 1
    assert metering.on_message(error(), now=T0) is not None


def test_a_broken_buffer_is_logged_and_retried_not_fatal(buffer, tmp_path, caplog):
    fill(buffer, 1)
    metering = component(buffer)
    buffer._db.close()
    with caplog.at_level(logging.ERROR):
        assert metering.on_connected(now=T0) == []
        assert metering.tick(now=T0 + 1) == []
        assert metering.on_message(ack((1, 1)), now=T0) == []
    assert "usage buffer unavailable" in caplog.text
    reopened = open_buffer(tmp_path)
    assert reopened.stats().pending == 1  # nothing lost


def test_the_session_routes_usage_acks_to_the_component(buffer):
    fill(buffer, 2)
    metering = component(buffer)
    identity = Identity(device_id=DEV, mqtt_username=DEV, mqtt_password="x", anchors=())
    session = DeviceSession(identity, agent_version="1", boot_epoch=1, components=[metering])
    out = session.on_connected(now=T0)
    usage = [o for o in out if o.topic == USAGE_TOPIC]
    assert keys_of(usage) == [(1, 1), (1, 2)]
    answer = FakeHub().receive(usage[0])
    session.on_message(f"d/{DEV}/down/usage_ack", encode_message(answer), now=T0)
    assert buffer.stats().pending == 0 and buffer.stats().codes == {"stored": 2}


def test_every_ack_message_is_decoded_before_it_reaches_the_buffer(buffer):
    fill(buffer, 1)
    metering = component(buffer)
    identity = Identity(device_id=DEV, mqtt_username=DEV, mqtt_password="x", anchors=())
    session = DeviceSession(identity, agent_version="1", boot_epoch=1, components=[metering])
    session.on_connected(now=T0)
    bad = cbor.encode({0: 1, 1: "usage_ack", 2: []})  # an ack must answer 1..1000 keys
    assert session.on_message(f"d/{DEV}/down/usage_ack", bad, now=T0) == []
    assert buffer.stats().pending == 1


def _coalesced(*answers):
    """One ack answering several messages, as the hub sends per device and hub batch."""
    return UsageAck(results=tuple(result for answer in answers for result in answer.results))


def test_one_coalesced_ack_completes_every_batch_it_answers(buffer):
    fill(buffer, 50)
    hub = FakeHub()
    metering = component(buffer, batch_max_records=10, max_in_flight=3)
    out = metering.on_connected(now=T0)
    assert len(out) == 3 and metering.in_flight == 3
    more = metering.on_message(_coalesced(*(hub.receive(o) for o in out)), now=T0)
    # all three complete at once, and the window opens for the next ones
    assert keys_of(more) == [(1, s) for s in range(31, 51)]
    assert metering.in_flight == 2 and buffer.stats().pending == 20
    assert metering.counters.acked == 30 and metering.counters.unknown_acks == 0
    assert metering.on_message(_coalesced(*(hub.receive(o) for o in more)), now=T0) == []
    assert metering.in_flight == 0 and buffer.stats().pending == 0 and len(hub.stored) == 50


def test_an_error_beside_a_coalesced_ack_resends_only_the_refused_batch(buffer):
    fill(buffer, 30)
    hub = FakeHub()
    metering = component(buffer, batch_max_records=10, max_in_flight=3)
    first, refused, third = metering.on_connected(now=T0)
    # The hub refused the second message whole (its error is published first)
    # and answered the other two in one ack.
    retry = metering.on_message(error(), now=T0)
    assert keys_of(retry) == [(1, s) for s in range(1, 6)]
    rest = metering.on_message(_coalesced(hub.receive(first), hub.receive(third)), now=T0)
    assert keys_of(rest) == keys_of([refused])  # the isolation retry was answered too
    assert metering.in_flight == 1 and buffer.stats().pending == 10
    metering.on_message(hub.receive(rest[0]), now=T0)
    assert metering.in_flight == 0 and buffer.stats().pending == 0
    assert metering.counters.codes == {"stored": 30} and len(hub.stored) == 30
