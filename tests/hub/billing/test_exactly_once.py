"""Exactly-once billing: replays and late arrivals never change what a period costs.

Usage records are replayed (the same idempotency key sent again, sometimes
after the period closed) and some arrive late; the job closes each period at
its cutoff with only the records received so far. In the end, what was
invoiced for each period (its line plus adjustments) is exactly the price of
the ground-truth sum of its distinct records, and the audit agrees.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from hub.billing.plans import parse_plan
from hub.billing.pricing import price
from hub.telemetry.ingest import UsageHandler
from protocols.messages import decode_message
from protocols.usage_messages import RawUsageRecord, UsageAck, UsageBatch
from tests.hub.billing.conftest import FEB, GRACE, JAN, MAR, Biller

PERIODS = (JAN, FEB, MAR)
PLAN: dict[str, Any] = {
    "currency": "EUR",
    "model": "allowance",
    "included": "50",
    "overage": {
        "model": "graduated",
        "tiers": [
            {"up_to": 200, "unit_price": "0.07", "flat_fee": "1.50"},
            {"up_to": None, "unit_price": "0.0125", "flat_fee": "4.00"},
        ],
    },
}


@dataclass(frozen=True)
class Send:
    device: int
    seq: int
    quantity: Decimal
    recorded_at: datetime
    received_at: datetime


def scenario(seed: int) -> tuple[list[Send], dict[int, Decimal]]:
    """Distinct records, each sent 1-3 times, some late; and the truth per period."""
    rng = random.Random(seed)
    sends: list[Send] = []
    truth: dict[int, Decimal] = defaultdict(Decimal)
    seqs = [0, 0]
    for index, (start, end) in enumerate(PERIODS):
        span = int((end - start).total_seconds())
        for _ in range(rng.randint(5, 25)):
            device = rng.randrange(2)
            seqs[device] += 1
            quantity = Decimal(rng.randint(0, 4000)) / Decimal(rng.choice([1, 4, 1000]))
            recorded = start + timedelta(seconds=rng.randrange(span))
            if rng.random() < 0.1:
                recorded = end - timedelta(seconds=1)  # right at the edge
            truth[index] += quantity.quantize(Decimal("0.000001"))
            first = recorded + timedelta(seconds=rng.randint(1, 600))
            if rng.random() < 0.25:  # late: after the period's close
                first = end + GRACE + timedelta(hours=rng.randint(0, 24 * 40))
            for replay in range(rng.randint(1, 3)):
                received = first + timedelta(days=replay * rng.randint(0, 20))
                sends.append(Send(device, seqs[device], quantity, recorded, received))
    return sends, truth


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_invoiced_amount_is_the_price_of_the_ground_truth(biller: Biller, seed: int) -> None:
    biller.plan(PLAN)
    sends, truth = scenario(seed)
    final_close = MAR[1] + GRACE + timedelta(days=62)  # two more closes catch late ones
    sends = sorted((s for s in sends if s.received_at < final_close), key=lambda s: s.received_at)
    closes = [end + GRACE for _, end in PERIODS] + [
        MAR[1] + GRACE + timedelta(days=31),
        final_close,
    ]
    pending = iter(sends)
    upcoming = next(pending, None)
    for close in closes:
        while upcoming is not None and upcoming.received_at < close:
            biller.usage(
                upcoming.quantity, upcoming.recorded_at, upcoming.received_at,
                device=upcoming.device, seq=upcoming.seq,
            )  # fmt: skip
            upcoming = next(pending, None)
        biller.run(close)
    assert upcoming is None

    billed: dict[str, int] = defaultdict(int)
    quantities: dict[str, Decimal] = defaultdict(Decimal)
    starts: dict[str, datetime] = {}
    for invoice in biller.invoices():
        for line in invoice["lines"]:
            billed[line["period_id"]] += line["amount"]
            quantities[line["period_id"]] += Decimal(line["quantity"])
            starts[line["period_id"]] = datetime.fromisoformat(line["period_start"])
    by_start = {starts[pid]: pid for pid in starts}
    plan = parse_plan(PLAN)
    for index, (start, end) in enumerate(PERIODS):
        period_id = by_start[start]
        assert quantities[period_id] == truth[index] == biller.stored_total(start, end)
        assert billed[period_id] == price(plan, truth[index]).total
    report = biller.audit()
    assert report["ok"] is True, report["differences"]
    assert report["pending"] == []


def test_through_the_ingestion_handler_with_replayed_batches(biller: Biller) -> None:
    """Batches go through the real usage handler; every batch is delivered twice, some
    records again later in other batches, some after their period closed."""
    biller.plan(PLAN)
    rng = random.Random(7)
    handler = UsageHandler()
    truth: dict[int, int] = defaultdict(int)
    pending: list[tuple[datetime, str, RawUsageRecord]] = []
    seqs = [0, 0]
    for index, (start, end) in enumerate(PERIODS):
        for _ in range(40):
            device = rng.randrange(2)
            seqs[device] += 1
            quantity = rng.randint(0, 30)
            recorded = start + timedelta(seconds=rng.randrange(int((end - start).total_seconds())))
            truth[index] += quantity
            raw = RawUsageRecord(
                (1, seqs[device], "api.calls", quantity, int(recorded.timestamp()))
            )
            late = rng.random() < 0.2
            arrival = end + GRACE + timedelta(hours=rng.randint(1, 200)) if late else recorded
            pending.append((arrival + timedelta(seconds=30), biller.devices[device], raw))
    codes: Counter[str] = Counter()

    def deliver_until(cutoff: datetime) -> None:
        due = sorted((p for p in pending if p[0] < cutoff), key=lambda p: p[0])
        for arrival, device, raw in due:
            pending.remove((arrival, device, raw))
            codes.update(ingest(biller, handler, device, [raw], arrival))
            codes.update(ingest(biller, handler, device, [raw], arrival))  # the ack was lost
            if rng.random() < 0.3:  # replayed again much later, after a reconnect
                pending.append((arrival + timedelta(days=rng.randint(1, 40)), device, raw))

    for close in [end + GRACE for _, end in PERIODS] + [MAR[1] + GRACE + timedelta(days=31)]:
        deliver_until(close)
        biller.run(close)
    assert codes["stored"] == sum(seqs)
    assert codes["duplicate"] >= sum(seqs)
    assert set(codes) <= {"stored", "duplicate"}

    billed: dict[datetime, int] = defaultdict(int)
    for invoice in biller.invoices():
        for line in invoice["lines"]:
            billed[datetime.fromisoformat(line["period_start"])] += line["amount"]
    plan = parse_plan(PLAN)
    for index, (start, _) in enumerate(PERIODS):
        assert billed[start] == price(plan, truth[index]).total
    report = biller.audit()
    assert report["ok"] is True, report["differences"]


def ingest(
    biller: Biller,
    handler: UsageHandler,
    device: str,
    records: list[RawUsageRecord],
    now: datetime,
) -> list[str]:
    """One usage batch from ``device`` through the handler, committed; the ack's codes."""
    with biller.factory() as s:
        [reply] = handler.handle(s, [(device, UsageBatch(records=tuple(records)))], now)
        s.commit()
    ack = decode_message(reply.payload)
    assert isinstance(ack, UsageAck)
    return [result.code for result in ack.results]
