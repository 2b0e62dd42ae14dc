"""The recorder reads usage batches and acks off the wire and folds feature checks."""

from __future__ import annotations

from protocols.messages import ErrorReply, encode_message
from protocols.usage_messages import RawUsageRecord, UsageAck, UsageBatch
from simulator.recorder import Recorder


def test_usage_batches_and_acks_are_recorded_by_key() -> None:
    recorder = Recorder()
    record = recorder.add("SN-1", "g", 0, ())
    record.device_id = "dev-a"
    batch = UsageBatch(
        records=(
            RawUsageRecord([1, 1, "api_calls", 2, 100]),
            RawUsageRecord([1, 2, "api_calls", 3, 101]),
        )
    )
    recorder.sent(record, "d/dev-a/up/usage", encode_message(batch))
    recorder.sent(record, "d/dev-a/up/usage", encode_message(batch))  # a resend
    recorder.sent(record, "d/dev-a/up/hello", b"not usage")
    assert set(record.usage_sent) == {(1, 1), (1, 2)}
    assert record.usage_resends == 2
    ack = UsageAck(results=((1, 1, "stored"), (1, 2, "duplicate")))
    recorder.received(record, "d/dev-a/down/usage_ack", encode_message(ack))
    assert record.usage_acks == {(1, 1): "stored", (1, 2): "duplicate"}
    error = ErrorReply(code="invalid_message", message="x", ref="d/dev-a/up/usage")
    recorder.received(record, "d/dev-a/down/error", encode_message(error))
    assert record.errors == {"invalid_message": 1}
    assert record.foreign_received == []


def test_feature_checks_keep_the_worst_overrun_and_last_enabled_time() -> None:
    recorder = Recorder()
    record = recorder.add("SN-1", "g", -30, ())
    recorder.feature_check(
        record, feature="premium", enabled=True, real_now=100.0, not_after=110, seq=1
    )
    recorder.feature_check(
        record, feature="premium", enabled=True, real_now=120.0, not_after=110, seq=1
    )
    recorder.feature_check(
        record, feature="premium", enabled=False, real_now=200.0, not_after=110, seq=1
    )
    seen = record.features["premium"]
    assert (seen.worst_overrun, seen.last_enabled_at, seen.worst_seq) == (10.0, 120.0, 1)
