"""Usage ingestion through the real batch handler, on every backend."""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from device_agent.metering.component import MeteringComponent
from device_agent.metering.config import MeteringSettings
from hub.entitlements import service as ent_service
from hub.entitlements.schemas import FeatureCreate
from hub.telemetry import queries
from hub.telemetry.caps import TOTAL_CEILING
from hub.telemetry.ingest import UsageHandler
from hub.telemetry.models import (
    MICRO,
    UsageConflict,
    UsageGap,
    UsagePeriodTotal,
    UsageQuarantine,
    UsageRecord,
    UsageRejection,
    UsageSequence,
)
from hub.telemetry.policy import UsagePolicy
from protocols.messages import ErrorReply, Hello, decode_message
from protocols.usage_messages import MAX_RECORDS, RawUsageRecord, UsageAck, UsageBatch
from tests.device_agent.metering.harness import T0 as AGENT_T0
from tests.device_agent.metering.harness import bulk_append, open_buffer
from tests.hub.analytics.conftest import T0
from tests.hub.telemetry.conftest import TS0, UsageShop, make_usage_shop, rec

NOW = T0 + timedelta(hours=1)


def count(factory: sessionmaker[Session], model: Any, **where: Any) -> int:
    with factory() as s:
        query = select(func.count()).select_from(model)
        for name, value in where.items():
            query = query.where(getattr(model, name) == value)
        return int(s.scalar(query) or 0)


# ---------------------------------------------------------------- storing


def test_records_are_stored_with_their_coverage(usage: UsageShop) -> None:
    device = usage.devices[0]
    codes = usage.send(device, [rec(1, 0.1), rec(2, 2), rec(3, 1.5, dim="user-7")])
    assert codes == ["stored"] * 3
    rows = usage.records(device)
    assert [r.quantity for r in rows] == [Decimal("0.1"), Decimal(2), Decimal("1.5")]
    assert all(isinstance(r.quantity, Decimal) for r in rows)
    first = rows[0]
    assert (first.account_id, first.product_id, first.entitlement_id) == (
        usage.shop.account_id,
        usage.shop.product_id,
        usage.entitlement_id,
    )
    assert first.tenant_id == usage.tenant_id and first.meter == "api.calls"
    assert first.recorded_at == datetime.fromtimestamp(TS0 + 61, UTC)
    assert first.received_at == NOW and first.over_cap is False
    assert rows[2].dimension == "user-7" and rows[0].dimension is None
    assert usage.handler.last.codes == Counter(stored=3)


def test_replay_is_duplicate_and_identity_comes_from_the_topic(usage: UsageShop) -> None:
    a, b = usage.devices
    batch = [rec(1, 5), rec(2, 7)]
    assert usage.send(a, batch) == ["stored", "stored"]
    assert usage.send(a, batch) == ["duplicate", "duplicate"]
    # the same (boot_epoch, seq) from another device's topic is that device's record
    assert usage.send(b, batch) == ["stored", "stored"]
    assert usage.total(a) == usage.total(b) == Decimal(12)
    # a month later (outside any dedup window) it is still a duplicate
    later = NOW + timedelta(days=120)
    assert usage.send(a, batch, now=later) == ["duplicate", "duplicate"]
    assert count(usage.factory, UsageRecord, device_id=a) == 2


def test_acks_go_to_each_senders_topic(usage: UsageShop) -> None:
    a, b = usage.devices
    replies = usage.deliver(
        [(a, UsageBatch(records=(rec(1),))), (b, UsageBatch(records=(rec(1), rec(2))))]
    )
    assert [topic for topic, _ in replies] == [f"d/{a}/down/usage_ack", f"d/{b}/down/usage_ack"]
    assert count(usage.factory, UsageRecord, device_id=a) == 1
    assert count(usage.factory, UsageRecord, device_id=b) == 2


def _acks(replies: list[tuple[str, bytes]]) -> list[tuple[str, list[tuple[int, int, str]]]]:
    decoded = [(topic, decode_message(payload)) for topic, payload in replies]
    return [
        (topic, [(*r.key, r.code) for r in ack.results])
        for topic, ack in decoded
        if isinstance(ack, UsageAck)
    ]


def test_one_ack_per_device_lists_all_its_messages_in_order(usage: UsageShop) -> None:
    a, b = usage.devices
    replies = usage.deliver(
        [
            (a, UsageBatch(records=(rec(1), rec(2)))),
            (b, UsageBatch(records=(rec(1),))),
            (a, UsageBatch(records=(rec(3), rec(1, 9)))),  # a new key and a conflict
            (a, UsageBatch(records=(rec(2),))),  # a replay within the same batch
        ]
    )
    assert _acks(replies) == [
        (
            f"d/{a}/down/usage_ack",
            [
                (1, 1, "stored"),
                (1, 2, "stored"),
                (1, 3, "stored"),
                (1, 1, "conflict"),
                (1, 2, "duplicate"),
            ],
        ),
        (f"d/{b}/down/usage_ack", [(1, 1, "stored")]),
    ]
    assert count(usage.factory, UsageRecord, device_id=a) == 3
    assert count(usage.factory, UsageConflict, device_id=a) == 1


def test_a_coalesced_ack_is_split_at_the_result_limit(usage: UsageShop) -> None:
    device = usage.devices[0]
    messages = [
        (device, UsageBatch(records=tuple(rec(seq, ts=TS0 + 60) for seq in range(n, n + 700))))
        for n in (1, 701, 1401)
    ]
    acks = _acks(usage.deliver(messages))
    assert [len(results) for _, results in acks] == [MAX_RECORDS, MAX_RECORDS, 100]
    assert {topic for topic, _ in acks} == {f"d/{device}/down/usage_ack"}
    keys = [(epoch, seq) for _, results in acks for epoch, seq, _ in results]
    assert keys == [(1, seq) for seq in range(1, 2101)]
    assert count(usage.factory, UsageRecord, device_id=device) == 2100


def test_a_wrong_type_gets_its_error_beside_the_devices_ack(usage: UsageShop) -> None:
    device = usage.devices[0]
    hello = Hello(agent_version="1", manifest_seq=0, boot_epoch=1)
    first, second = UsageBatch(records=(rec(1),)), UsageBatch(records=(rec(2),))
    replies = usage.deliver([(device, first), (device, hello), (device, second)])
    errors = [t for t, p in replies if isinstance(decode_message(p), ErrorReply)]
    assert errors == [f"d/{device}/down/error"]
    assert _acks(replies) == [(f"d/{device}/down/usage_ack", [(1, 1, "stored"), (1, 2, "stored")])]


def test_a_message_of_another_type_gets_an_error(usage: UsageShop) -> None:
    device = usage.devices[0]
    replies = usage.deliver([(device, Hello(agent_version="1", manifest_seq=0, boot_epoch=1))])
    ((topic, payload),) = replies
    assert topic == f"d/{device}/down/error"
    reply = decode_message(payload)
    assert isinstance(reply, ErrorReply) and reply.code == "invalid_message"


# ---------------------------------------------------------------- exactly once


def _schedule(rng: random.Random, records: list[tuple[str, RawUsageRecord]]) -> list[Any]:
    """Each record 1..5 times, shuffled, cut into batches of 1..4 messages of 1..40 records."""
    deliveries = [item for item in records for _ in range(rng.randint(1, 5))]
    rng.shuffle(deliveries)
    batches: list[list[tuple[str, UsageBatch]]] = []
    while deliveries:
        batch: list[tuple[str, UsageBatch]] = []
        for _ in range(rng.randint(1, 4)):
            if not deliveries:
                break
            size = rng.randint(1, 40)
            take, deliveries = deliveries[:size], deliveries[size:]
            by_device: dict[str, list[RawUsageRecord]] = {}
            for device, record in take:
                by_device.setdefault(device, []).append(record)
            batch.extend((d, UsageBatch(records=tuple(r))) for d, r in by_device.items())
        batches.append(batch)
    return batches


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_exactly_once_under_redelivery_reorder_and_restarts(
    session_factory: sessionmaker[Session], seed: int
) -> None:
    usage = make_usage_shop(session_factory)
    rng = random.Random(seed)
    truth: dict[tuple[str, int, int], Decimal] = {}
    records: list[tuple[str, RawUsageRecord]] = []
    for device in usage.devices:
        for epoch, length in ((1, 60), (2, 40)):  # an agent restart: a new boot epoch
            for seq in range(1, length + 1):
                quantity = rng.choice([1, 2.5, 0.125, 1000, 0.000001])
                records.append((device, rec(seq, quantity, epoch=epoch)))
                truth[(device, epoch, seq)] = Decimal(repr(quantity))
    acked: Counter[str] = Counter()
    schedule = _schedule(rng, records)
    for index, batch in enumerate(schedule):
        if index == len(schedule) // 2:
            usage.handler = UsageHandler()  # a hub restart: nothing carried in memory
        for _topic, payload in usage.deliver(batch):
            acked.update(r.code for r in decode_message(payload).results)  # type: ignore[attr-defined]
    assert set(acked) <= {"stored", "duplicate"}
    assert acked["stored"] == len(truth)
    assert usage.total() == sum(truth.values())
    with usage.factory() as s:
        stored = {
            (r.device_id, r.boot_epoch, r.seq): r.quantity
            for r in s.scalars(select(UsageRecord).where(UsageRecord.tenant_id == usage.tenant_id))
        }
    assert stored == truth
    assert count(usage.factory, UsageGap) == 0 or _all_gaps_closed(usage)


def _all_gaps_closed(usage: UsageShop) -> bool:
    with usage.factory() as s:
        return not s.scalar(
            select(func.count())
            .select_from(UsageGap)
            .where(UsageGap.tenant_id == usage.tenant_id, UsageGap.closed_at.is_(None))
        )


def test_one_key_twice_in_one_batch(usage: UsageShop) -> None:
    device = usage.devices[0]
    codes = usage.send(device, [rec(1, 3), rec(1, 3), rec(1, 4), rec(2, 1)])
    assert codes == ["stored", "duplicate", "conflict", "stored"]
    assert usage.total(device) == Decimal(4)


# ---------------------------------------------------------------- conflicts


def test_conflict_is_recorded_once_and_the_first_stays(usage: UsageShop) -> None:
    device = usage.devices[0]
    assert usage.send(device, [rec(1, 5)]) == ["stored"]
    for _ in range(3):
        assert usage.send(device, [rec(1, 6)]) == ["conflict"]
    assert usage.send(device, [rec(1, 5, meter="storage")]) == ["conflict"]
    assert usage.send(device, [rec(1, 5, dim="x")]) == ["conflict"]
    assert usage.send(device, [rec(1, 5, ts=TS0 + 999)]) == ["conflict"]
    assert usage.total(device) == Decimal(5)
    with usage.factory() as s:
        offered = Counter(
            (c.meter, c.quantity, c.dimension, int(c.recorded_at.timestamp()))
            for c in s.scalars(select(UsageConflict).where(UsageConflict.device_id == device))
        )
    assert offered == Counter(
        [
            ("api.calls", Decimal(6), None, TS0 + 61),
            ("storage", Decimal(5), None, TS0 + 61),
            ("api.calls", Decimal(5), "x", TS0 + 61),
            ("api.calls", Decimal(5), None, TS0 + 999),
        ]
    )


def test_float_and_int_of_equal_value_are_the_same_content(usage: UsageShop) -> None:
    device = usage.devices[0]
    assert usage.send(device, [rec(1, 2)]) == ["stored"]
    assert usage.send(device, [rec(1, 2.0)]) == ["duplicate"]
    assert usage.send(device, [rec(2, 0.1)]) == ["stored"]
    assert usage.send(device, [rec(2, 0.1000000001)]) == ["duplicate"]  # beyond six decimals


# ---------------------------------------------------------------- quarantine


def test_clock_skew_is_quarantined_counted_and_not_billed(usage: UsageShop) -> None:
    device = usage.devices[0]
    now_ts = int(NOW.timestamp())
    records = [
        rec(1, 1, ts=now_ts + 300),  # at the edge: accepted
        rec(2, 2, ts=now_ts + 301),  # future
        rec(3, 4, ts=now_ts - 89 * 86_400),  # old but within 90 days
        rec(4, 8, ts=now_ts - 91 * 86_400),  # too old
        rec(5, 16, ts=2**64 - 1),  # beyond any date: invalid, not skewed
    ]
    codes = usage.send(device, records)
    assert codes == ["stored", "quarantined", "stored", "quarantined", "rejected"]
    assert usage.total(device) == Decimal(5)
    with usage.factory() as s:
        reasons = dict(
            (seq, reason)
            for seq, reason in s.execute(
                select(UsageQuarantine.seq, UsageQuarantine.reason).where(
                    UsageQuarantine.device_id == device
                )
            )
        )
    assert reasons == {2: "future", 4: "too_old"}
    # replays are answered the same and kept once; other content is a conflict
    assert usage.send(device, records[1:2]) == ["quarantined"]
    assert usage.send(device, [rec(2, 3, ts=now_ts + 301)]) == ["conflict"]
    assert count(usage.factory, UsageQuarantine, device_id=device) == 2


def test_a_week_offline_is_still_billed(usage: UsageShop) -> None:
    device = usage.devices[0]
    later = T0 + timedelta(days=8)
    codes = usage.send(device, [rec(1, 1, ts=TS0 + 3600), rec(2, 1, ts=TS0 + 7200)], now=later)
    assert codes == ["stored", "stored"]


def test_policy_window_is_configurable(session_factory: sessionmaker[Session]) -> None:
    usage = make_usage_shop(session_factory, devices=1)
    usage.handler = UsageHandler(UsagePolicy(future_skew_seconds=0, max_age_seconds=86_400))
    now_ts = int(NOW.timestamp())
    codes = usage.send(
        usage.devices[0],
        [rec(1, ts=now_ts), rec(2, ts=now_ts + 1), rec(3, ts=now_ts - 86_401)],
    )
    assert codes == ["stored", "quarantined", "quarantined"]
    with pytest.raises(ValueError, match="max_age_seconds"):
        UsagePolicy(max_age_seconds=0)


# ---------------------------------------------------------------- bad input


BAD_RECORDS: list[tuple[RawUsageRecord, str]] = [
    (rec(1, -1), "negative"),
    (rec(2, float("nan")), "finite"),
    (rec(3, float("inf")), "finite"),
    (rec(4, float("-inf")), "finite"),
    (rec(5, 10**12 + 1), "exceeds"),
    (rec(6, 1e300), "exceeds"),
    (rec(7, True), "number"),
    (rec(8, "12"), "number"),
    (rec(9, -0.0), "negative"),
    (rec(10, meter="x" * 65), "meter"),
    (rec(11, meter=""), "meter"),
    (rec(12, meter="api\ncalls"), "meter"),
    (rec(13, meter=7), "meter"),
    (rec(14, meter="bad\ud800"), "UTF-8"),
    (rec(15, dim="d" * 65), "dim"),
    (rec(16, ts=-5), "ts"),
    (rec(17, ts=1.5), "ts"),
    (rec(18, meter="nope"), "unknown meter"),
    (rec(19, meter="vpn"), "unknown meter"),  # a flag feature is not a meter
    (rec(0), "seq starts at 1"),
]


def test_bad_records_are_rejected_and_the_rest_is_stored(usage: UsageShop) -> None:
    device = usage.devices[0]
    records = [bad for bad, _ in BAD_RECORDS] + [rec(20, 3), rec(21, 4)]
    codes = usage.send(device, records)
    assert codes == ["rejected"] * len(BAD_RECORDS) + ["stored", "stored"]
    assert usage.total(device) == Decimal(7)
    with usage.factory() as s:
        reasons = dict(
            (seq, reason)
            for seq, reason in s.execute(
                select(UsageRejection.seq, UsageRejection.reason).where(
                    UsageRejection.device_id == device
                )
            )
        )
    for record, fragment in BAD_RECORDS:
        assert fragment in reasons[record.seq], (record, reasons[record.seq])
    # a rejected record replayed is rejected again, and recorded once
    assert usage.send(device, [BAD_RECORDS[0][0]]) == ["rejected"]
    assert count(usage.factory, UsageRejection, device_id=device) == len(BAD_RECORDS)


def test_huge_keys_are_rejected_without_touching_the_tables(usage: UsageShop) -> None:
    device = usage.devices[0]
    top = 2**64 - 1
    codes = usage.send(device, [rec(top), rec(1, epoch=top), rec(2**63 - 1, ts=TS0 + 60), rec(1)])
    assert codes == ["rejected", "rejected", "stored", "stored"]
    assert count(usage.factory, UsageRejection, device_id=device) == 0
    # seq 2**63-1 opened a gap 2..2**63-2 after seq 1 of the same epoch
    with usage.factory() as s:
        gap = s.scalars(select(UsageGap).where(UsageGap.device_id == device)).one()
    assert (gap.first_missing_seq, gap.last_missing_seq) == (2, 2**63 - 2)


def test_other_tenants_meter_is_unknown(session_factory: sessionmaker[Session]) -> None:
    usage = make_usage_shop(session_factory, devices=1)
    other = make_usage_shop(session_factory, devices=1)
    with other.shop.tx() as s:
        ent_service.create_feature(
            s, tenant_id=other.tenant_id, actor="t", now=T0, product_id=other.shop.product_id,
            data=FeatureCreate(key="theirs", kind="metered", cap_per_period=5, period="day"),
        )  # fmt: skip
    assert usage.send(usage.devices[0], [rec(1, meter="theirs")]) == ["rejected"]
    assert other.send(other.devices[0], [rec(1, meter="theirs")]) == ["stored"]


# ---------------------------------------------------------------- leakage and caps


def test_uncovered_usage_is_stored_without_an_account(usage: UsageShop) -> None:
    shop = usage.shop
    idle = shop.device("IDLE", claimed=True)
    device = usage.devices[0]
    assert usage.send(idle, [rec(1, 3)]) == ["stored"]
    # before the activation (T0) and after the deactivation: not covered
    shop.deactivate(usage.entitlement_id, device, T0 + timedelta(minutes=30))
    codes = usage.send(
        device,
        [rec(1, 1, ts=TS0 - 10), rec(2, 2, ts=TS0 + 60), rec(3, 4, ts=TS0 + 1800)],
    )
    assert codes == ["stored"] * 3
    accounts = [r.account_id for r in usage.records(device)]
    assert accounts == [None, shop.account_id, None]
    assert [r.account_id for r in usage.records(idle)] == [None]


def test_revoked_or_disabled_feature_does_not_cover(usage: UsageShop) -> None:
    shop = usage.shop
    a, b = usage.devices
    shop.override(usage.entitlement_id, T0, {"storage": {"enabled": False}})
    usage.send(a, [rec(1, meter="storage"), rec(2)])
    assert [r.account_id is None for r in usage.records(a)] == [True, False]
    shop.revoke(usage.entitlement_id, T0 + timedelta(minutes=1))
    usage.send(b, [rec(1)])
    assert usage.records(b)[0].account_id is None


def test_over_cap_marks_the_records_past_the_daily_cap(usage: UsageShop) -> None:
    device = usage.devices[0]
    day2 = TS0 + 86_400
    codes = usage.send(
        device,
        [
            rec(1, 30, meter="storage"),
            rec(2, 20, meter="storage"),  # total 50: at the cap, not past it
            rec(3, 0.5, meter="storage"),  # 50.5: past
            rec(4, 10, meter="storage"),
            rec(5, 40, meter="storage", ts=day2),  # the next day starts at zero
        ],
        now=T0 + timedelta(days=1, hours=1),
    )
    assert codes == ["stored"] * 5
    assert [r.over_cap for r in usage.records(device)] == [False, False, True, True, False]
    # a later batch keeps counting from the stored total
    usage.send(
        device, [rec(6, 10, meter="storage", ts=day2 + 5)], now=T0 + timedelta(days=1, hours=2)
    )
    assert usage.records(device)[-1].over_cap is False  # 50 on day 2
    usage.send(
        device, [rec(7, 1, meter="storage", ts=day2 + 6)], now=T0 + timedelta(days=1, hours=2)
    )
    assert usage.records(device)[-1].over_cap is True
    with usage.factory() as s:
        totals = {
            int(t.period_start.timestamp()): t.quantity
            for t in s.scalars(select(UsagePeriodTotal).where(UsagePeriodTotal.device_id == device))
        }
    assert totals == {TS0 - TS0 % 86_400: Decimal("60.5"), day2 - day2 % 86_400: Decimal(51)}


def test_a_batch_is_written_in_recorded_order_and_caps_count_in_arrival_order(
    usage: UsageShop,
) -> None:
    """Rows are inserted sorted by ``recorded_at`` (index locality), stably: ids rise
    with arrival among records of one instant, so ``latest`` still prefers the later
    stored of two records that tie on time and seq. Over-cap marks still follow
    arrival, whatever the insert order."""
    device = usage.devices[0]
    later, earlier = TS0 + 90, TS0 + 70
    records = [
        rec(1, 30, meter="storage", ts=later),
        rec(2, 20, meter="storage", ts=earlier),  # total 50: at the cap
        rec(1, 4, meter="storage", ts=later, epoch=2),  # 54: past; ties epoch 1 seq 1
        rec(3, 1, meter="storage", ts=earlier),  # 55: past
    ]
    assert usage.send(device, records) == ["stored"] * 4
    rows = usage.records(device)  # epoch, then seq
    by_id = [(r.boot_epoch, r.seq) for r in sorted(rows, key=lambda r: r.id)]
    assert by_id == [(1, 2), (1, 3), (1, 1), (2, 1)]
    over = {(r.boot_epoch, r.seq): r.over_cap for r in rows}
    assert over == {(1, 1): False, (1, 2): False, (2, 1): True, (1, 3): True}
    with usage.factory() as s:
        (latest,) = queries.usage_totals(
            s, tenant_id=usage.tenant_id, start=T0, end=T0 + timedelta(days=1),
            meter="storage", device_id=device, group_by=(), aggregation="latest",
        )  # fmt: skip
    assert latest.value == Decimal(4)  # epoch 2's record: stored after epoch 1's


def test_two_grants_add_their_caps(usage: UsageShop) -> None:
    shop = usage.shop
    device = usage.devices[0]
    later = T0 + timedelta(seconds=30)
    second = shop.grant("perpetual", later, quantity=1)
    shop.activate(second, device, later)
    codes = usage.send(
        device, [rec(1, 15, meter="energy"), rec(2, 5, meter="energy"), rec(3, 1, meter="energy")]
    )
    assert codes == ["stored"] * 3
    rows = usage.records(device)
    assert [r.over_cap for r in rows] == [False, False, True]  # cap 10 + 10
    assert {r.entitlement_id for r in rows} == {usage.entitlement_id}  # the first created


# ---------------------------------------------------------------- gaps


def _gaps(usage: UsageShop, device: str) -> list[tuple[int, int, int, bool]]:
    with usage.factory() as s:
        rows = s.scalars(
            select(UsageGap)
            .where(UsageGap.device_id == device)
            .order_by(UsageGap.boot_epoch, UsageGap.first_missing_seq)
        )
        return [
            (g.boot_epoch, g.first_missing_seq, g.last_missing_seq, g.closed_at is None)
            for g in rows
        ]


def test_gaps_open_shrink_split_and_close(usage: UsageShop) -> None:
    device = usage.devices[0]
    usage.send(device, [rec(1), rec(2), rec(5), rec(20)])
    assert _gaps(usage, device) == [(1, 3, 4, True), (1, 6, 19, True)]
    usage.send(device, [rec(4), rec(10), rec(21)])
    assert _gaps(usage, device) == [(1, 3, 3, True), (1, 6, 9, True), (1, 11, 19, True)]
    usage.send(device, [rec(3)] + [rec(s) for s in range(6, 10)] + [rec(s) for s in range(11, 20)])
    assert _gaps(usage, device) == [(1, 3, 3, False), (1, 6, 9, False), (1, 11, 19, False)]
    with usage.factory() as s:
        mark = s.get_one(UsageSequence, (device, 1))
    assert mark.high_seq == 21


def test_a_new_epoch_starting_late_has_a_gap_and_rejected_records_count_as_seen(
    usage: UsageShop,
) -> None:
    device = usage.devices[0]
    usage.send(
        device,
        [rec(3, epoch=2), rec(4, -1, epoch=2), rec(5, meter="nope", epoch=2), rec(6, epoch=2)],
    )
    assert _gaps(usage, device) == [(2, 1, 2, True)]
    usage.send(device, [rec(1, epoch=2), rec(2, float("nan"), epoch=2)])
    assert _gaps(usage, device) == [(2, 1, 2, False)]


def test_quarantined_and_duplicates_do_not_open_gaps(usage: UsageShop) -> None:
    device = usage.devices[0]
    assert usage.send(device, [rec(1), rec(2, ts=TS0 + 86_400), rec(3)])[1] == "quarantined"
    usage.send(device, [rec(1), rec(3)])
    assert _gaps(usage, device) == []


# ---------------------------------------------------------------- scale


def test_a_week_offline_replays_50000_records_exactly_once(
    session_factory: sessionmaker[Session],
) -> None:
    usage = make_usage_shop(session_factory, devices=1)
    device = usage.devices[0]
    n, size = 50_000, 1_000
    week_ago = int((NOW - timedelta(days=7)).timestamp())
    records = [
        rec(seq, (seq % 7) + 0.25, ts=week_ago + seq * 12, dim=f"u{seq % 13}")
        for seq in range(1, n + 1)
    ]
    truth = sum(Decimal(seq % 7) + Decimal("0.25") for seq in range(1, n + 1))
    batches = [records[i : i + size] for i in range(0, n, size)]
    stored = Counter[str]()
    for chunk in batches:
        stored.update(usage.send(device, chunk))
    assert stored == Counter(stored=n)
    assert usage.total(device) == truth
    # the acks were lost: the whole backlog comes again, in another order
    random.Random(5).shuffle(batches)
    again = Counter[str]()
    for chunk in batches:
        again.update(usage.send(device, chunk))
    assert again == Counter(duplicate=n)
    assert count(usage.factory, UsageRecord, device_id=device) == n
    assert usage.total(device) == truth
    assert _gaps(usage, device) == []


def test_period_totals_saturate_instead_of_overflowing(usage: UsageShop) -> None:
    """Records at the 10^12 maximum must not overflow the stored period total (a
    64-bit integer on SQLite) and fail every batch they travel in."""
    device = usage.devices[0]
    huge = [rec(seq, 10**12, meter="storage") for seq in range(1, 11)]
    assert usage.send(device, huge) == ["stored"] * 10
    assert usage.send(device, [rec(11, 10**12, meter="storage")]) == ["stored"]
    with usage.factory() as s:
        totals = s.scalars(
            select(UsagePeriodTotal.quantity).where(UsagePeriodTotal.device_id == device)
        ).all()
    assert totals and all(t <= Decimal(TOTAL_CEILING) / MICRO for t in totals)


@pytest.mark.parametrize("epochs", [3, 120], ids=["few-epochs", "more-than-a-query-names"])
def test_marks_of_many_epochs_in_one_batch(usage: UsageShop, epochs: int) -> None:
    device = usage.devices[0]
    first = [(device, UsageBatch(records=(rec(2, epoch=e),))) for e in range(1, epochs + 1)]
    usage.deliver(first)
    assert usage.handler.last.codes == Counter(stored=epochs)
    assert usage.handler.last.gaps_opened == epochs  # seq 1 of every epoch is missing
    both = [UsageBatch(records=(rec(2, epoch=e), rec(1, epoch=e))) for e in range(1, epochs + 1)]
    again = [(device, batch) for batch in both]
    usage.deliver(again)
    assert usage.handler.last.codes == Counter(duplicate=epochs, stored=epochs)
    assert usage.handler.last.gaps_opened == 0
    assert count(usage.factory, UsageGap, device_id=device, closed_at=None) == 0
    assert count(usage.factory, UsageRecord, device_id=device) == 2 * epochs


def test_a_real_agent_completes_every_batch_from_one_coalesced_ack(
    usage: UsageShop, tmp_path: Path
) -> None:
    """The agent's component against this handler: three batches in, one ack out."""
    device = usage.devices[0]
    buffer = open_buffer(tmp_path)
    buffer.begin_epoch(1)
    try:
        bulk_append(buffer, 30, "api.calls")
        agent = MeteringComponent(
            buffer,
            device_id=device,
            settings=MeteringSettings(batch_max_records=10, max_in_flight=3),
        )
        out = agent.on_connected(now=AGENT_T0)
        assert len(out) == 3 and agent.in_flight == 3
        now = datetime.fromtimestamp(AGENT_T0 + 60, UTC)
        replies = usage.deliver([(device, decode_message(o.payload)) for o in out], now)
        ((topic, payload),) = replies
        assert topic == f"d/{device}/down/usage_ack"
        assert agent.on_message(decode_message(payload), now=AGENT_T0 + 1) == []
        assert agent.in_flight == 0 and buffer.stats().pending == 0
        assert agent.counters.codes == {"stored": 30}
    finally:
        buffer.close()
    assert count(usage.factory, UsageRecord, device_id=device) == 30
