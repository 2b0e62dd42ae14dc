"""Model-based test: any interleaving of record, publish, deliver, ack, crash and reconnect.

The device must never lose or duplicate a key: every key minted is either
still in the device's buffer or stored on the hub (with the content it was
minted with), no key is minted twice, and a final drain delivers everything.
The one exception is the error policy: a record the hub refuses alone twice
is discarded, and counted; the model checks that the count accounts for
every key that is neither buffered nor stored.
"""

import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from device_agent.metering.buffer import UsageBuffer
from device_agent.metering.component import MeteringComponent
from device_agent.outgoing import Outgoing
from protocols.messages import ErrorReply
from protocols.usage_messages import UsageAck, UsageRecord
from tests.device_agent.metering.harness import (
    T0,
    USAGE_TOPIC,
    FakeHub,
    component,
    open_buffer,
)


class MeteringMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="metering-model-"))
        self.epoch = 1
        self.now = T0
        self.minted: dict[tuple[int, int], UsageRecord] = {}
        self.hub = FakeHub()
        self.to_hub: list[Outgoing] = []  # published, not yet processed by the hub
        self.to_device: list[UsageAck] = []  # acks published, not yet delivered
        self.connected = False
        self.discarded: set[tuple[int, int]] = set()
        self._boot()

    def _boot(self) -> None:
        if hasattr(self, "device"):  # keep what the old instance gave up on
            self.discarded |= set(self.device.counters.discarded_keys)
        self.buffer: UsageBuffer = open_buffer(self.dir)
        self.buffer.begin_epoch(self.epoch)
        self.device: MeteringComponent = component(
            self.buffer, batch_max_records=3, max_in_flight=2, retry_seconds=5, flush_seconds=0
        )

    def teardown(self) -> None:
        self.buffer.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    @rule(quantity=st.integers(0, 10) | st.floats(0, 10), dim=st.none() | st.sampled_from("ab"))
    def record(self, quantity: float, dim: str | None) -> None:
        record = self.buffer.append("api_calls", quantity, ts=self.now, dim=dim).record
        assert record.key not in self.minted, f"key {record.key} minted twice"
        self.minted[record.key] = record

    @rule()
    def connect(self) -> None:
        self.connected = True
        self.to_hub.extend(self.device.on_connected(now=self.now))

    @precondition(lambda self: self.connected)
    @rule(seconds=st.integers(0, 12))
    def tick(self, seconds: int) -> None:
        self.now += seconds
        self.to_hub.extend(self.device.tick(now=self.now))

    @precondition(lambda self: self.to_hub)
    @rule(data=st.data(), ack_lost=st.booleans())
    def hub_processes(self, data: st.DataObject, ack_lost: bool) -> None:
        out = self.to_hub.pop(data.draw(st.integers(0, len(self.to_hub) - 1)))
        answer = self.hub.receive(out)
        if not ack_lost:
            self.to_device.append(answer)

    @precondition(lambda self: self.to_hub)
    @rule(data=st.data())
    def hub_cannot_decode(self, data: st.DataObject) -> None:
        """The hub answers a whole batch with an error (it stores nothing of it)."""
        self.to_hub.pop(data.draw(st.integers(0, len(self.to_hub) - 1)))
        refusal = ErrorReply(code="invalid_message", message="refused", ref=USAGE_TOPIC)
        more = self.device.on_message(refusal, now=self.now)
        assert more is not None
        if self.connected:
            self.to_hub.extend(more)

    @precondition(lambda self: self.to_device)
    @rule(data=st.data(), duplicate=st.booleans())
    def device_gets_ack(self, data: st.DataObject, duplicate: bool) -> None:
        index = data.draw(st.integers(0, len(self.to_device) - 1))
        answer = self.to_device[index] if duplicate else self.to_device.pop(index)
        more = self.device.on_message(answer, now=self.now)
        assert more is not None
        if self.connected:
            self.to_hub.extend(more)

    @rule()
    def connection_lost(self) -> None:
        # What the broker already holds may still arrive; the session is gone.
        self.connected = False

    @rule(new_epoch=st.booleans())
    def crash(self, new_epoch: bool) -> None:
        """SIGKILL: in-memory state gone; a restarted agent usually has a new epoch."""
        self.buffer.close()
        self.connected = False
        if new_epoch:
            self.epoch += 1
        self._boot()

    @rule()
    def crash_mid_record(self) -> None:
        """Killed inside append: the key was written but never committed."""
        db = self.buffer._db
        stats = self.buffer.stats()
        db.execute("BEGIN IMMEDIATE")
        db.execute(
            "INSERT INTO records VALUES (?, ?, 'api_calls', 1, 0, NULL)",
            (stats.boot_epoch, stats.last_seq + 1),
        )
        db.execute("UPDATE meta SET value = value + 1 WHERE name = 'seq'")
        db.close()
        self.connected = False
        self._boot()

    @invariant()
    def nothing_lost_nothing_altered(self) -> None:
        pending = {record.key: record for record in self.buffer.pending(limit=100_000)}
        assert set(pending) <= set(self.minted), "the buffer holds a key nobody minted"
        # Only the error policy may give up on a record, and it counts each one.
        discarded = self.discarded | set(self.device.counters.discarded_keys)
        missing = set(self.minted) - set(pending) - set(self.hub.stored)
        assert missing <= discarded, f"lost without being discarded: {missing - discarded}"
        assert self.buffer.stats().discarded == len(discarded)
        for key, record in self.minted.items():
            if key in self.hub.stored:
                assert self.hub.stored[key] == record
            if key in pending:
                assert pending[key] == record
        assert "conflict" not in self.hub.codes and "rejected" not in self.hub.codes

    @rule()
    def drain(self) -> None:
        """Stay connected until quiet: everything minted reaches the hub exactly once."""
        self.to_device.clear()
        self.connect()
        for _ in range(500):
            if self.to_hub:
                self.device_gets_ack_now(self.hub.receive(self.to_hub.pop(0)))
            else:
                self.now += 60
                self.to_hub.extend(self.device.tick(now=self.now))
                if not self.to_hub:
                    break
        assert self.buffer.stats().pending == 0
        discarded = self.discarded | set(self.device.counters.discarded_keys)
        assert set(self.minted) - set(self.hub.stored) <= discarded

    def device_gets_ack_now(self, answer: UsageAck) -> None:
        more = self.device.on_message(answer, now=self.now)
        assert more is not None
        self.to_hub.extend(more)


TestMeteringModel = MeteringMachine.TestCase
TestMeteringModel.settings = settings(
    max_examples=60,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
