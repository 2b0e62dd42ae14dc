"""The usage buffer: keys minted once, durable, bounded with counted drops, deleted on ack."""

import os
import sqlite3
import stat
import threading
from decimal import Decimal

import pytest

from device_agent.errors import StateError
from device_agent.metering.buffer import BUFFER_FILE, CapRule, UsageBuffer
from device_agent.metering.errors import BufferFull, CapExceeded
from protocols.usage_messages import AckResult, UsageRecord
from tests.device_agent.metering.harness import T0, ack, open_buffer


def test_keys_count_from_one_per_epoch_and_the_record_is_stored(tmp_path):
    buffer = open_buffer(tmp_path)
    assert buffer.begin_epoch(3) == 3
    first = buffer.append("api_calls", 2, ts=T0).record
    second = buffer.append("storage", 0.25, ts=T0 + 1, dim="user-1").record
    assert (first.key, second.key) == ((3, 1), (3, 2))
    assert buffer.pending() == [
        UsageRecord(3, 1, "api_calls", 2, T0),
        UsageRecord(3, 2, "storage", 0.25, T0 + 1, "user-1"),
    ]
    assert isinstance(buffer.pending()[0].quantity, int)
    assert isinstance(buffer.pending()[1].quantity, float)
    assert buffer.begin_epoch(4) == 4
    assert buffer.append("api_calls", 1, ts=T0).record.key == (4, 1)


def test_the_file_is_private_durable_and_in_wal_mode(tmp_path):
    buffer = open_buffer(tmp_path)
    mode = stat.S_IMODE(os.stat(tmp_path / BUFFER_FILE).st_mode)
    assert mode == 0o600
    db = sqlite3.connect(tmp_path / BUFFER_FILE)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()
    assert buffer._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_an_older_or_equal_epoch_keeps_the_sequence_going(tmp_path):
    buffer = open_buffer(tmp_path)
    buffer.begin_epoch(5)
    buffer.append("m", 1, ts=T0)
    # A reset boot counter must not restart keys that the hub already holds.
    assert buffer.begin_epoch(1) == 5
    assert buffer.begin_epoch(5) == 5
    assert buffer.append("m", 1, ts=T0).record.key == (5, 2)


def test_records_and_the_sequence_survive_a_reopen_even_after_acks(tmp_path):
    buffer = open_buffer(tmp_path)
    buffer.begin_epoch(1)
    for _ in range(5):
        buffer.append("m", 1, ts=T0)
    buffer.acknowledge(ack((1, 4), (1, 5)).results)
    buffer.close()
    reopened = open_buffer(tmp_path)
    assert [r.seq for r in reopened.pending()] == [1, 2, 3]
    # The counter, not the highest stored record, decides the next key.
    assert reopened.append("m", 1, ts=T0).record.key == (1, 6)


def test_an_uncommitted_transaction_leaves_no_trace(tmp_path):
    buffer = open_buffer(tmp_path)
    buffer.begin_epoch(1)
    buffer.append("m", 1, ts=T0)
    # Simulate a crash in the middle of append: the insert and the counter
    # update happened, the commit did not.
    db = buffer._db
    db.execute("BEGIN IMMEDIATE")
    db.execute("INSERT INTO records VALUES (1, 2, 'm', 1, 0, NULL)")
    db.execute("UPDATE meta SET value = 2 WHERE name = 'seq'")
    db.close()
    reopened = open_buffer(tmp_path)
    assert [r.key for r in reopened.pending()] == [(1, 1)]
    assert reopened.stats().last_seq == 1
    assert reopened.append("m", 1, ts=T0).record.key == (1, 2)


def test_a_full_buffer_refuses_and_counts_every_drop(tmp_path):
    buffer = open_buffer(tmp_path, max_records=3)
    buffer.begin_epoch(1)
    for _ in range(3):
        buffer.append("m", 1, ts=T0)
    for attempt in (1, 2):
        with pytest.raises(BufferFull) as refused:
            buffer.append("m", 1, ts=T0)
        assert refused.value.dropped == attempt and refused.value.max_records == 3
    stats = buffer.stats()
    assert (stats.pending, stats.dropped, stats.last_seq) == (3, 2, 3)  # no key for a drop
    buffer.acknowledge(ack((1, 1)).results)
    assert buffer.append("m", 1, ts=T0).record.key == (1, 4)
    buffer.close()
    assert open_buffer(tmp_path).stats().dropped == 2


def test_the_bound_is_persisted_and_can_be_changed(tmp_path):
    open_buffer(tmp_path, max_records=7).close()
    assert open_buffer(tmp_path).stats().max_records == 7
    assert open_buffer(tmp_path, max_records=9).stats().max_records == 9
    with pytest.raises(StateError):
        open_buffer(tmp_path, max_records=0)


def test_acks_delete_exactly_the_answered_keys_under_any_code(tmp_path):
    buffer = open_buffer(tmp_path)
    buffer.begin_epoch(1)
    for _ in range(6):
        buffer.append("m", 1, ts=T0)
    results = [
        AckResult(1, 1, "stored"),
        AckResult(1, 2, "duplicate"),
        AckResult(1, 3, "conflict"),
        AckResult(1, 4, "quarantined"),
        AckResult(1, 5, "rejected"),
    ]
    outcome = buffer.acknowledge(results)
    assert outcome.deleted == dict.fromkeys(
        ["stored", "duplicate", "conflict", "quarantined", "rejected"], 1
    )
    assert [r.key for r in buffer.pending()] == [(1, 6)]
    stats = buffer.stats()
    assert stats.acknowledged == 5 and stats.pending == 1
    assert stats.codes == dict.fromkeys(
        ["conflict", "duplicate", "quarantined", "rejected", "stored"], 1
    )


def test_duplicate_and_unknown_acks_change_nothing(tmp_path):
    buffer = open_buffer(tmp_path)
    buffer.begin_epoch(1)
    buffer.append("m", 1, ts=T0)
    buffer.append("m", 1, ts=T0)
    assert buffer.acknowledge(ack((1, 1)).results).deleted_total == 1
    again = buffer.acknowledge(ack((1, 1)).results)
    assert (again.deleted_total, again.unknown) == (0, 1)
    forged = buffer.acknowledge(ack((9, 9), (1, 99), (2**64 - 1, 2**64 - 1)).results)
    assert (forged.deleted_total, forged.unknown) == (0, 3)
    assert [r.key for r in buffer.pending()] == [(1, 2)]
    assert buffer.stats().acknowledged == 1 and buffer.stats().codes == {"stored": 1}


def test_pending_reads_from_a_key_on(tmp_path):
    buffer = open_buffer(tmp_path)
    buffer.begin_epoch(1)
    for _ in range(3):
        buffer.append("m", 1, ts=T0)
    buffer.begin_epoch(2)
    buffer.append("m", 1, ts=T0)
    assert [r.key for r in buffer.pending(start=(1, 3))] == [(1, 3), (2, 1)]
    assert [r.key for r in buffer.pending(start=(1, 4), limit=5)] == [(2, 1)]
    assert [r.key for r in buffer.pending(limit=2)] == [(1, 1), (1, 2)]
    assert [r.key for r in buffer.records([(2, 1), (1, 2), (7, 7)])] == [(1, 2), (2, 1)]


def test_a_corrupt_row_is_discarded_not_published(tmp_path):
    buffer = open_buffer(tmp_path)
    buffer.begin_epoch(1)
    buffer.append("m", 1, ts=T0)
    buffer.append("m", 1, ts=T0)
    with buffer._write() as db:
        db.execute("UPDATE records SET quantity = -5 WHERE seq = 1")
    assert [r.key for r in buffer.pending()] == [(1, 2)]
    stats = buffer.stats()
    assert (stats.discarded, stats.pending) == (1, 1)


def test_a_file_that_is_not_a_buffer_is_refused(tmp_path):
    (tmp_path / BUFFER_FILE).write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StateError):
        open_buffer(tmp_path)


def test_an_unknown_format_is_refused(tmp_path):
    open_buffer(tmp_path).close()
    db = sqlite3.connect(tmp_path / BUFFER_FILE)
    db.execute("UPDATE meta SET value = 99 WHERE name = 'format'")
    db.commit()
    db.close()
    with pytest.raises(StateError, match="format"):
        open_buffer(tmp_path)


def test_a_pending_counter_out_of_step_is_repaired_on_open(tmp_path):
    buffer = open_buffer(tmp_path)
    buffer.begin_epoch(1)
    buffer.append("m", 1, ts=T0)
    with buffer._write() as db:
        db.execute("UPDATE meta SET value = 40 WHERE name = 'pending'")
    buffer.close()
    assert open_buffer(tmp_path).stats().pending == 1


def test_a_locked_database_is_a_state_error_and_nothing_is_minted(tmp_path):
    buffer = UsageBuffer.open(tmp_path / BUFFER_FILE, timeout=0.05)
    buffer.begin_epoch(1)
    blocker = sqlite3.connect(tmp_path / BUFFER_FILE, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    with pytest.raises(StateError):
        buffer.append("m", 1, ts=T0)
    blocker.execute("ROLLBACK")
    assert buffer.append("m", 1, ts=T0).record.key == (1, 1)


def test_concurrent_writers_never_share_a_key(tmp_path):
    first, second = open_buffer(tmp_path), open_buffer(tmp_path)
    first.begin_epoch(1)
    minted: list[tuple[int, int]] = []
    lock = threading.Lock()

    def write(buffer: UsageBuffer) -> None:
        for _ in range(100):
            key = buffer.append("m", 1, ts=T0).record.key
            with lock:
                minted.append(key)

    threads = [threading.Thread(target=write, args=(b,)) for b in (first, second, first)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(minted) == [(1, seq) for seq in range(1, 301)]
    assert first.stats().pending == 300


def test_cap_rules_count_per_period_in_the_same_transaction(tmp_path):
    buffer = open_buffer(tmp_path)
    buffer.begin_epoch(1)
    rule = CapRule("day", T0 - T0 % 86_400, cap=10, overage="block")
    assert buffer.append("m", 6, ts=T0, rule=rule).used == Decimal(6)
    with pytest.raises(CapExceeded) as refused:
        buffer.append("m", 5, ts=T0, rule=rule)
    assert refused.value.used == Decimal(6) and refused.value.cap == 10
    assert buffer.append("m", 4, ts=T0, rule=rule).used == Decimal(10)
    stats = buffer.stats()
    assert (stats.cap_refused, stats.pending, stats.last_seq) == (1, 2, 2)
    assert buffer.period_usage("m").used == Decimal(10)
