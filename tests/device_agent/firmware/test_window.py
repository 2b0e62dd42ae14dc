"""The pull window: bounded requests, out-of-order arrival, timeouts, resync."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from device_agent.firmware.download import ChunkWindow


def test_requests_cover_the_window_in_runs_of_at_most_16():
    window = ChunkWindow(chunk_count=100, in_flight=40)
    assert window.plan(0) == [(0, 16), (16, 16), (32, 8)]
    assert window.plan(0) == []  # nothing asked twice
    assert window.outstanding == 40


def test_a_short_image_is_asked_for_once():
    window = ChunkWindow(chunk_count=3)
    assert window.plan(0) == [(0, 3)]


def test_out_of_order_chunks_wait_for_the_prefix():
    window = ChunkWindow(chunk_count=4, in_flight=4)
    window.plan(0)
    assert window.accept(2, b"c", 1) and window.accept(1, b"b", 1)
    assert window.ready() == 0 and window.take() == []
    assert window.accept(0, b"a", 1)
    assert window.ready() == 3 and window.take() == [b"a", b"b", b"c"]
    assert window.base == 3 and not window.complete
    assert window.accept(3, b"d", 2) and window.take() == [b"d"] and window.complete


def test_duplicates_and_chunks_outside_the_window_are_dropped():
    window = ChunkWindow(chunk_count=100, in_flight=8)
    window.plan(0)
    assert window.accept(0, b"a", 0)
    assert not window.accept(0, b"a", 0)
    assert not window.accept(8, b"x", 0)  # beyond in_flight: never kept
    window.take()
    assert not window.accept(0, b"a", 0)  # already written


def test_the_window_slides_as_chunks_are_written():
    window = ChunkWindow(chunk_count=40, in_flight=16, request_size=8)
    assert window.plan(0) == [(0, 8), (8, 8)]
    for index in range(8):
        window.accept(index, b"x", 0)
    window.take()
    assert window.plan(0) == [(16, 8)]


def test_a_timeout_asks_for_the_missing_chunks_again_and_gives_up_after_max_stalls():
    window = ChunkWindow(chunk_count=4, timeout=10, max_stalls=2)
    window.plan(0)
    window.accept(1, b"b", 3)
    assert not window.expire(12)  # deadline moved by the progress at 3
    assert not window.expire(13) and window.stalls == 1
    assert window.plan(13) == [(0, 1), (2, 2)]
    assert not window.expire(23) and window.stalls == 2
    window.plan(23)
    assert window.expire(33) and window.stalls == 3


def test_fractional_seconds_work_too():
    window = ChunkWindow(chunk_count=4, timeout=0.5)
    window.plan(0.0)
    assert not window.expire(0.4)
    assert not window.expire(0.5) and window.stalls == 1
    assert window.plan(0.5) == [(0, 4)]


def test_progress_resets_the_stall_count():
    window = ChunkWindow(chunk_count=4, timeout=5, max_stalls=1)
    window.plan(0)
    window.expire(5)
    window.plan(5)
    window.accept(0, b"a", 6)
    assert window.stalls == 0


def test_no_deadline_without_outstanding_requests():
    window = ChunkWindow(chunk_count=4)
    assert not window.expire(10**9)


def test_a_refused_chunk_is_asked_again_alone():
    window = ChunkWindow(chunk_count=4)
    window.plan(0)
    window.refused(2)
    assert window.plan(0) == [(2, 1)] and window.bad_chunks == 1


def test_restart_asks_for_everything_missing():
    window = ChunkWindow(chunk_count=4)
    window.plan(0)
    window.accept(1, b"b", 0)
    window.restart()
    assert window.plan(0) == [(0, 1), (2, 2)]


def test_resync_after_a_lost_write_asks_again():
    window = ChunkWindow(chunk_count=4)
    window.plan(0)
    for index in range(3):
        window.accept(index, b"x", 0)
    window.take()
    window.resync(1)  # only one chunk made it to disk
    assert window.base == 1 and window.plan(0) == [(1, 3)]


@pytest.mark.parametrize(
    "kwargs",
    [{"request_size": 0}, {"request_size": 17}, {"in_flight": 0}, {"timeout": 0}, {"base": 5}],
)
def test_bad_parameters(kwargs):
    with pytest.raises(ValueError):
        ChunkWindow(chunk_count=4, **kwargs)


@given(
    count=st.integers(1, 60),
    in_flight=st.integers(1, 40),
    size=st.integers(1, 16),
    order=st.randoms(use_true_random=False),
)
@settings(max_examples=200)
def test_any_arrival_order_reassembles_the_image(count, in_flight, size, order):
    window = ChunkWindow(chunk_count=count, in_flight=in_flight, request_size=size)
    written: list[int] = []
    for _ in range(count * 4):
        runs = window.plan(0)
        assert all(1 <= n <= size for _, n in runs)
        asked = [i for start, n in runs for i in range(start, start + n)]
        assert all(window.base <= i < window.base + in_flight for i in asked)
        order.shuffle(asked)
        for index in asked:
            window.accept(index, index.to_bytes(2, "big"), 0)
        written += [int.from_bytes(c, "big") for c in window.take()]
        if window.complete:
            break
    assert written == list(range(count))


def test_a_skipped_request_is_asked_again_when_a_later_one_is_answered():
    window = ChunkWindow(chunk_count=64, in_flight=32, request_size=16)
    assert window.plan(0) == [(0, 16), (16, 16)]
    window.accept(16, b"x", 1)  # the second request answered, the first one skipped
    assert window.lost == 16
    assert window.plan(1) == [(0, 16)]
    for index in range(17, 32):
        window.accept(index, b"x", 1)
    assert window.plan(1) == []  # nothing else is missing
    assert window.lost == 16


def test_chunks_of_one_request_in_order_lose_nothing():
    window = ChunkWindow(chunk_count=32, in_flight=32)
    window.plan(0)
    for index in range(32):
        window.accept(index, b"x", 0)
    assert window.lost == 0 and window.ready() == 32


def test_a_window_sliding_chunk_by_chunk_asks_in_full_requests():
    window = ChunkWindow(chunk_count=100, in_flight=32, request_size=16)
    requests = window.plan(0)
    for index in range(100):
        window.accept(index, b"x", 0)
        window.take()
        requests += window.plan(0)
    assert [count for _, count in requests] == [16, 16, 16, 16, 16, 16, 4]
    assert window.complete


def test_a_hole_behind_the_front_is_asked_for_at_once():
    window = ChunkWindow(chunk_count=100, in_flight=32, request_size=16)
    window.plan(0)
    window.refused(3)
    assert window.plan(0) == [(3, 1)]


def test_a_slow_round_trip_stretches_the_timeout_up_to_its_cap():
    window = ChunkWindow(chunk_count=64, in_flight=32, request_size=16, timeout=0.5)
    assert window.current_timeout == 0.5 and window.srtt is None
    window.plan(0.0)
    window.accept(0, b"a", 0.6)  # the hub held the request queued for 0.6 s
    assert window.srtt == 0.6
    assert window.current_timeout == pytest.approx(1.8)  # 3 round trips
    assert not window.expire(0.6 + 1.7)  # a fixed 0.5 s would have stalled here
    assert not window.expire(0.6 + 1.8) and window.stalls == 1
    slow = ChunkWindow(chunk_count=64, in_flight=32, request_size=16, timeout=0.5)
    slow.plan(0.0)
    slow.accept(0, b"a", 5.0)  # a very slow one: capped at 4 x timeout
    assert slow.current_timeout == 2.0


def test_a_stall_asks_again_for_the_oldest_request_only():
    window = ChunkWindow(chunk_count=64, in_flight=32, request_size=16, timeout=0.5)
    assert window.plan(0.0) == [(0, 16), (16, 16)]
    assert not window.expire(0.5) and window.stalls == 1
    assert window.plan(0.5) == [(0, 16)]  # the probe; 16..31 are still outstanding
    # The hub was only slow: the first two requests are answered in order, then the probe.
    for index in range(32):
        assert window.accept(index, b"x", 0.7)
    assert window.take() and window.lost == 0 and window.stalls == 0
    assert not window.accept(0, b"x", 0.8)  # the probe's answer: a dropped duplicate
    assert window.srtt == pytest.approx(0.7)  # the probe's round trip was not measured


def test_requests_the_hub_lost_are_asked_again_one_timeout_each():
    window = ChunkWindow(chunk_count=64, in_flight=32, request_size=16, timeout=0.5)
    window.plan(0.0)
    window.expire(0.5)
    assert window.plan(0.5) == [(0, 16)]
    for index in range(16):  # the hub lost both requests (a restart): the probe answers
        window.accept(index, b"x", 0.6)
    assert window.lost == 0  # its answer may have been the first request's: no guess
    window.take()
    assert window.plan(0.6) == [(32, 16)]  # the window moved on; 16..31 still outstanding
    assert not window.expire(1.1) and window.stalls == 1
    assert window.plan(1.1) == [(16, 16)]  # the next oldest, asked again


def test_fast_round_trips_keep_the_configured_timeout_and_only_first_arrivals_count():
    window = ChunkWindow(chunk_count=64, in_flight=32, request_size=16, timeout=0.5)
    window.plan(0.0)
    window.accept(0, b"a", 0.01)
    window.accept(1, b"b", 0.4)  # same request: no second sample
    assert window.srtt == 0.01 and window.current_timeout == 0.5
    window.accept(16, b"q", 0.1)  # the second request's first chunk
    assert window.srtt == pytest.approx(0.875 * 0.01 + 0.125 * 0.1)
    window.restart()  # a reconnect forgets the outstanding requests, not the round trip
    assert window.srtt is not None and window.plan(1.0)


def _short_front_request_then_lost(window: ChunkWindow) -> None:
    """The reviewer's case: a short re-ask at the front and a tail request, both lost."""
    assert window.plan(0) == [(0, 16), (16, 16)]
    for index in range(32):
        if index != 5:
            assert window.accept(index, b"x", 0.1)
    window.refused(5)
    window.take()
    assert window.plan(0.2) == [(5, 1), (32, 5)]
    window.refused(5)
    assert window.plan(0.3) == [(5, 1)]  # a newer serial than (32, 5): the hub loses both


def test_a_stall_with_a_short_front_request_keeps_asking_until_the_stall_limit():
    window = ChunkWindow(chunk_count=100, in_flight=32, request_size=16, timeout=10, max_stalls=6)
    _short_front_request_then_lost(window)
    asked: list[list[tuple[int, int]]] = []
    gave_up_at = None
    for now in range(20, 1000, 10):
        if window.expire(now):
            gave_up_at = now
            break
        asked.append(window.plan(now))
    assert gave_up_at is not None and gave_up_at < 200  # not the 3600 s download timeout
    assert window.stalls == 7
    assert asked[0] == [(32, 5)]  # the oldest request, though short and at the front
    assert all(asked)  # every stall re-asked something


def test_a_stall_with_a_short_front_request_finishes_once_the_hub_answers():
    window = ChunkWindow(chunk_count=100, in_flight=32, request_size=16, timeout=10)
    _short_front_request_then_lost(window)
    now = 20.0
    for _ in range(200):
        if window.complete:
            break
        assert not window.expire(now)
        for index, count in window.plan(now):
            for chunk in range(index, index + count):
                window.accept(chunk, b"x", now + 0.1)
        window.take()
        now += 10
    assert window.complete


def test_a_probe_round_that_asks_nothing_again_leaves_later_requests_ordinary():
    window = ChunkWindow(chunk_count=64, in_flight=32, request_size=16, timeout=10)
    assert window.plan(0) == [(0, 16), (16, 16)]
    assert not window.expire(10) and window.stalls == 1  # (0, 16) given up on...
    for index in range(16):  # ...and answered late, before the next plan
        window.accept(index, b"x", 10.05)
    window.take()
    assert window.plan(10.1) == [(32, 16)]  # new ground, not a re-ask
    window.accept(32, b"x", 10.3)
    assert window.srtt == pytest.approx(0.2)  # its round trip was measured
    assert window.lost == 16  # and 16..31, asked before it, were taken as skipped
