"""Publishes the usage buffer to the hub: a sans-IO session component.

The buffer (:class:`~device_agent.metering.buffer.UsageBuffer`) is the only
state that matters; what this component holds in memory (which batches are in
flight, how far it has read) is rebuilt on every connect, so a crash or a
reconnect costs at most a replay, never a record.

- ``on_connected``: forget what was in flight and replay the buffer from its
  oldest record, in batches.
- ``tick(now)``: resend a batch unanswered for ``retry_seconds`` (doubling per
  attempt, up to 8 times that), then publish new records: full batches at once,
  a partial one at most every ``flush_seconds``; never more than
  ``max_in_flight`` batches unacknowledged. A batch holds at most
  ``batch_max_records`` records (≤ 1000) and ``batch_max_bytes`` encoded (≤ 48 KiB).
- ``UsageAck``: delete exactly the answered keys (any final code) and count
  the codes; keys the buffer does not hold are ignored; then publish more.
- ``ErrorReply`` whose ``ref`` is this device's usage topic (the hub could not
  decode a whole batch): the sender cannot tell which batch failed when several
  are in flight, so it falls back to one batch at a time and halves the batch
  size, resending from the oldest unanswered record; each clean answer doubles
  the size again (and restores the window at full size). A record refused
  alone twice in a row is discarded (counted in ``discarded``, logged): that
  is the one case where a record leaves the buffer without an ack.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field

from device_agent.errors import StateError
from device_agent.metering.buffer import Key, UsageBuffer
from device_agent.metering.config import MeteringSettings
from device_agent.outgoing import Outgoing
from protocols import topics
from protocols.messages import ErrorReply, Message, encode_message
from protocols.usage_messages import (
    BATCH_OVERHEAD,
    UsageAck,
    UsageBatch,
    UsageRecord,
    record_size,
)

log = logging.getLogger(__name__)

MAX_STRIKES = 2
MAX_BACKOFF_FACTOR = 8


@dataclass
class _Batch:
    keys: set[Key]
    sent_at: int
    attempts: int = 1


@dataclass
class PublishCounters:
    """What the component did since it was created (in memory, for logs and tests)."""

    batches: int = 0
    records: int = 0
    resent: int = 0
    acked: int = 0
    unknown_acks: int = 0
    errors: int = 0
    discarded: int = 0
    codes: dict[str, int] = field(default_factory=dict)
    discarded_keys: list[Key] = field(default_factory=list)


class MeteringComponent:
    """Replays, batches and retries the usage buffer over a device session."""

    def __init__(self, buffer: UsageBuffer, *, device_id: str, settings: MeteringSettings) -> None:
        """Publish ``buffer`` for ``device_id`` as ``settings`` say."""
        self.buffer = buffer
        self.settings = settings
        self.topic = topics.device_up(device_id, topics.UpKind.USAGE)
        self.counters = PublishCounters()
        self._in_flight: dict[int, _Batch] = {}
        self._batch_ids = 0
        self._next_from: Key | None = None
        self._last_partial = -math.inf
        self._limit = settings.batch_max_records
        self._window = settings.max_in_flight
        self._strikes: dict[Key, int] = {}

    @property
    def in_flight(self) -> int:
        """Batches published and not yet answered."""
        return len(self._in_flight)

    def on_connected(self, *, now: int) -> list[Outgoing]:
        """Replay: everything unacknowledged is sent again, oldest first."""
        self._in_flight.clear()
        self._next_from = None
        return self._guarded(lambda: self._fill(now, force=True))

    def tick(self, *, now: int) -> list[Outgoing]:
        """Resend unanswered batches, then publish new records."""
        return self._guarded(lambda: [*self._resend(now), *self._fill(now)])

    def on_message(self, message: Message, *, now: int) -> list[Outgoing] | None:
        """Handle a :class:`UsageAck`, or an error about our usage topic."""
        if isinstance(message, UsageAck):
            return self._guarded(lambda: self._on_ack(message, now))
        if isinstance(message, ErrorReply) and message.ref == self.topic:
            return self._guarded(lambda: self._on_error(message, now))
        return None

    def _guarded(self, step: Callable[[], list[Outgoing]]) -> list[Outgoing]:
        # A buffer failure (disk full, locked too long) must not stop the agent:
        # nothing was deleted, so the next tick or connect tries again.
        try:
            return step()
        except StateError as exc:
            log.error("usage buffer unavailable, will retry: %s", exc)
            return []

    def _fill(self, now: int, *, force: bool = False) -> list[Outgoing]:
        out: list[Outgoing] = []
        while len(self._in_flight) < self._window:
            rows = self.buffer.pending(start=self._next_from, limit=self._limit)
            if not rows:
                break
            batch = _take(rows, self._limit, self.settings.batch_max_bytes)
            full = len(batch) < len(rows) or len(batch) == self._limit
            if not full and not force and now < self._last_partial + self.settings.flush_seconds:
                break
            out.append(self._publish(batch, now))
            if not full:
                self._last_partial = now
                break
        return out

    def _publish(self, batch: list[UsageRecord], now: int, batch_id: int | None = None) -> Outgoing:
        keys = {record.key for record in batch}
        if batch_id is None:
            self._batch_ids += 1
            batch_id = self._batch_ids
            self._in_flight[batch_id] = _Batch(keys, now)
            last = batch[-1].key
            self._next_from = (last[0], last[1] + 1)
            self.counters.batches += 1
            self.counters.records += len(batch)
        else:
            held = self._in_flight[batch_id]
            held.keys, held.sent_at, held.attempts = keys, now, held.attempts + 1
            self.counters.resent += 1
        message = UsageBatch(records=tuple(record.to_raw() for record in batch))
        return Outgoing(self.topic, encode_message(message), qos=1)

    def _resend(self, now: int) -> list[Outgoing]:
        out: list[Outgoing] = []
        for batch_id, batch in list(self._in_flight.items()):
            wait = self.settings.retry_seconds * min(2 ** (batch.attempts - 1), MAX_BACKOFF_FACTOR)
            if now - batch.sent_at < wait:
                continue
            rows = self.buffer.records(batch.keys)
            if not rows:
                del self._in_flight[batch_id]
                continue
            log.info("usage batch of %d records unanswered; resending", len(rows))
            out.append(self._publish(rows, now, batch_id))
        return out

    def _on_ack(self, ack: UsageAck, now: int) -> list[Outgoing]:
        outcome = self.buffer.acknowledge(ack.results)
        self.counters.acked += outcome.deleted_total
        self.counters.unknown_acks += outcome.unknown
        for code, count in outcome.deleted.items():
            self.counters.codes[code] = self.counters.codes.get(code, 0) + count
        answered = {result.key for result in ack.results}
        completed = 0
        for batch_id, batch in list(self._in_flight.items()):
            batch.keys -= answered
            if not batch.keys:
                del self._in_flight[batch_id]
                completed += 1
        for key in answered:
            self._strikes.pop(key, None)
        if completed:
            self._recover()
        return self._fill(now)

    def _recover(self) -> None:
        """After a clean answer, grow back towards the configured batch size and window."""
        full = self.settings.batch_max_records
        if self._limit < full:
            self._limit = min(full, self._limit * 2)
        if self._limit == full:
            self._window = self.settings.max_in_flight

    def _on_error(self, error: ErrorReply, now: int) -> list[Outgoing]:
        self.counters.errors += 1
        log.warning("hub refused a usage batch: %s: %s", error.code, error.message)
        if not self._in_flight:
            return []
        oldest = min(min(batch.keys) for batch in self._in_flight.values())
        if len(self._in_flight) == 1:
            (batch,) = self._in_flight.values()
            self._limit = max(1, len(batch.keys) // 2)
            if len(batch.keys) == 1:
                self._strike(oldest)
        else:
            self._limit = max(1, self._limit // 2)
        self._in_flight.clear()
        self._window = 1
        self._next_from = oldest
        return self._fill(now, force=True)

    def _strike(self, key: Key) -> None:
        strikes = self._strikes.get(key, 0) + 1
        if strikes < MAX_STRIKES:
            self._strikes[key] = strikes
            return
        self._strikes.pop(key, None)
        removed = self.buffer.discard([key])
        self.counters.discarded += removed
        if removed:
            self.counters.discarded_keys.append(key)
        log.error("usage record %s/%s refused alone %d times; discarded", *key, strikes)


def _take(rows: list[UsageRecord], limit: int, max_bytes: int) -> list[UsageRecord]:
    """The longest prefix of ``rows`` within ``limit`` records and ``max_bytes`` encoded."""
    size = BATCH_OVERHEAD
    taken: list[UsageRecord] = []
    for record in rows[:limit]:
        size += record_size(record.to_raw())
        if taken and size > max_bytes:
            break
        taken.append(record)
    return taken


__all__ = ["MAX_STRIKES", "MeteringComponent", "PublishCounters"]
