"""Aggregation semantics of ``hub.telemetry.queries`` on every backend."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import func, insert, select, text
from sqlalchemy.orm import Session, sessionmaker

from hub.billing.usage import period_usage
from hub.errors import ValidationFailed
from hub.registry.models import Tenant
from hub.telemetry import queries
from hub.telemetry.models import UsageRecord
from tests.hub.conftest import make_tenant

T0 = datetime(2030, 3, 1, tzinfo=UTC)
END = T0 + timedelta(days=60)


def _row(tenant: str, device: str, seq: int, **kw: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "tenant_id": tenant,
        "device_id": device,
        "boot_epoch": 1,
        "seq": seq,
        "meter": "api.calls",
        "quantity": Decimal(1),
        "dimension": None,
        "recorded_at": T0,
        "received_at": T0,
        "account_id": "acct-a",
        "product_id": "prod",
        "entitlement_id": "ent",
        "over_cap": False,
    }
    row.update(kw)
    return row


@pytest.fixture(scope="module")
def seeded(session_factory: sessionmaker[Session]) -> Iterator[str]:
    """A tenant with a known set of records (and a second tenant's record)."""
    tenant = make_tenant(session_factory, T0).tenant_id
    other = make_tenant(session_factory, T0).tenant_id
    day = timedelta(days=1)
    rows = [
        _row(tenant, "dev-a", 1, quantity=Decimal("0.1"), dimension="u1"),
        _row(tenant, "dev-a", 2, quantity=Decimal("0.2"), dimension="u2", recorded_at=T0 + day),
        _row(tenant, "dev-a", 3, quantity=Decimal("7"), dimension="u1", recorded_at=T0 + day),
        _row(tenant, "dev-b", 1, quantity=Decimal("1000000000000"), dimension="u3"),
        _row(tenant, "dev-b", 2, quantity=Decimal("999999999999.999999"), over_cap=True),
        _row(tenant, "dev-c", 1, quantity=Decimal("5"), account_id=None, product_id=None,
             entitlement_id=None, recorded_at=T0 + 40 * day),
        _row(tenant, "dev-a", 4, meter="storage", quantity=Decimal("3"), recorded_at=T0 + day),
        _row(tenant, "dev-a", 5, meter="storage", quantity=Decimal("2"),
             recorded_at=T0 + 2 * day, received_at=T0 + 50 * day),
        # same recorded_at as seq 5: the greater seq wins "latest"
        _row(tenant, "dev-a", 6, meter="storage", quantity=Decimal("9"),
             recorded_at=T0 + 2 * day),
        _row(other, "dev-x", 1, quantity=Decimal("1000")),
    ]  # fmt: skip
    with session_factory() as s:
        s.execute(insert(UsageRecord), rows)
        s.commit()
    yield tenant


def _totals(session: Session, tenant: str, **kw: Any) -> list[queries.UsageTotal]:
    return queries.usage_totals(session, tenant_id=tenant, start=T0, end=END, **kw)


def test_sum_is_exact_and_tenant_scoped(session: Session, seeded: str) -> None:
    totals = _totals(session, seeded, meter="api.calls", group_by=("device_id",))
    by_device = {t.keys["device_id"]: (t.value, t.records) for t in totals}
    assert by_device == {
        "dev-a": (Decimal("7.3"), 3),
        "dev-b": (Decimal("1999999999999.999999"), 2),
        "dev-c": (Decimal("5"), 1),
    }
    assert "dev-x" not in by_device


def test_each_aggregation(session: Session, seeded: str) -> None:
    def one(aggregation: str, meter: str = "api.calls", device: str = "dev-a") -> Decimal:
        (total,) = _totals(
            session, seeded, meter=meter, device_id=device, group_by=(), aggregation=aggregation
        )
        return total.value

    assert one("sum") == Decimal("7.3")
    assert one("count") == 3
    assert one("max") == Decimal("7")
    assert one("unique_count") == 2  # u1, u2
    assert one("latest", meter="storage") == Decimal("9")  # ties on time: greater seq
    assert one("max", device="dev-b") == Decimal("1000000000000")
    assert one("unique_count", device="dev-b") == 1  # null dimensions do not count


def test_latest_per_group(session: Session, seeded: str) -> None:
    totals = _totals(session, seeded, group_by=("device_id", "meter"), aggregation="latest")
    latest = {(t.keys["device_id"], t.keys["meter"]): (t.value, t.records) for t in totals}
    assert latest[("dev-a", "api.calls")] == (Decimal("7"), 3)  # seq 2 and 3 tie: 3 wins
    assert latest[("dev-a", "storage")] == (Decimal("9"), 3)
    assert latest[("dev-c", "api.calls")] == (Decimal("5"), 1)


def test_group_by_period_and_account(session: Session, seeded: str) -> None:
    totals = _totals(session, seeded, meter="api.calls", group_by=("account_id", "day"))
    got = {(t.keys["account_id"], t.keys["day"]): t.value for t in totals}
    assert got == {
        ("acct-a", "2030-03-01"): Decimal("1999999999999.999999") + Decimal("0.1"),
        ("acct-a", "2030-03-02"): Decimal("7.2"),
        (None, "2030-04-10"): Decimal("5"),
    }
    months = _totals(session, seeded, meter="api.calls", group_by=("month",))
    assert {t.keys["month"]: t.records for t in months} == {"2030-03": 5, "2030-04": 1}


def test_window_and_received(session: Session, seeded: str) -> None:
    narrow = queries.usage_totals(
        session, tenant_id=seeded, start=T0 + timedelta(days=1), end=T0 + timedelta(days=2),
        group_by=("meter",),
    )  # fmt: skip
    assert {t.keys["meter"]: t.value for t in narrow} == {
        "api.calls": Decimal("7.2"),
        "storage": Decimal("3"),
    }
    late = queries.usage_totals(
        session, tenant_id=seeded, start=T0 + timedelta(days=49), end=END,
        group_by=("device_id",), by_received=True,
    )  # fmt: skip
    assert [(t.keys["device_id"], t.value) for t in late] == [("dev-a", Decimal("2"))]


def test_empty_and_bad_arguments(session: Session, seeded: str) -> None:
    assert _totals(session, seeded, meter="nothing") == []
    with pytest.raises(ValidationFailed):
        _totals(session, seeded, aggregation="avg")
    with pytest.raises(ValidationFailed):
        _totals(session, seeded, group_by=("tenant_id",))
    with pytest.raises(ValidationFailed):
        queries.usage_totals(session, tenant_id=seeded, start=END, end=T0)
    with pytest.raises(ValidationFailed):
        queries.usage_totals(session, tenant_id=seeded, start=T0.replace(tzinfo=None), end=END)


def test_leakage_splits_uncovered_and_over_cap(session: Session, seeded: str) -> None:
    report = queries.leakage(session, tenant_id=seeded, start=T0, end=END)
    assert [(t.keys, t.value) for t in report.uncovered] == [
        ({"device_id": "dev-c", "meter": "api.calls"}, Decimal("5"))
    ]
    assert [(t.keys, t.value) for t in report.over_cap] == [
        ({"device_id": "dev-b", "meter": "api.calls"}, Decimal("999999999999.999999"))
    ]


def test_iter_records_streams_in_chunks(session: Session, seeded: str) -> None:
    rows = list(queries.iter_records(session, tenant_id=seeded, start=T0, end=END, chunk=2))
    assert len(rows) == 9
    assert [(r.recorded_at, r.id) for r in rows] == sorted((r.recorded_at, r.id) for r in rows)
    only = list(
        queries.iter_records(
            session, tenant_id=seeded, start=T0, end=END, device_id="dev-a", meter="storage"
        )
    )
    assert [r.seq for r in only] == [4, 5, 6]
    assert all(isinstance(r.quantity, Decimal) for r in rows)


class _Meter:
    feature_key = "api.calls"

    def __init__(self, aggregation: str) -> None:
        self.aggregation = aggregation


def test_evaluate_meter(session: Session, seeded: str) -> None:
    value = queries.evaluate_meter(session, _Meter("sum"), seeded, "acct-a", T0, END)
    assert value == Decimal("7.3") + Decimal("1999999999999.999999")
    assert queries.evaluate_meter(session, _Meter("count"), seeded, "acct-a", T0, END) == 5
    assert queries.evaluate_meter(session, _Meter("sum"), seeded, "acct-none", T0, END) == 0


def test_iter_records_leaves_the_callers_session_alone(session: Session, seeded: str) -> None:
    tenant = session.get_one(Tenant, seeded)
    assert len(list(queries.iter_records(session, tenant_id=seeded, start=T0, end=END))) == 9
    assert tenant in session  # billing's objects stay attached


def test_sums_at_the_per_record_maximum_do_not_overflow(
    session_factory: sessionmaker[Session],
) -> None:
    """10,000 records of 10^12 units: 10^22 micro-units, far past a signed 64-bit
    integer (9.2e18 micro-units = 9.2e12 units, reached after 9,224 such records).
    SQLite's SUM raises "integer overflow" on a plain sum of the stored micro-units;
    usage totals, meter values and billing's period usage stay exact on every backend."""
    tenant = make_tenant(session_factory, T0).tenant_id
    n = 10_000
    rows = [
        _row(tenant, f"dev-{seq % 7}", seq, quantity=Decimal(10**12),
             recorded_at=T0 + timedelta(seconds=seq))
        for seq in range(1, n + 1)
    ]  # fmt: skip
    rows.append(_row(tenant, "dev-odd", 1, quantity=Decimal("0.999999")))
    with session_factory() as s:
        s.execute(insert(UsageRecord), rows)
        s.commit()
    expected = Decimal(n * 10**12) + Decimal("0.999999")
    with session_factory() as s:
        (total,) = _totals(s, tenant, group_by=())
        assert (total.value, total.records) == (expected, n + 1)
        by_device = _totals(s, tenant, group_by=("device_id",))
        assert sum((t.value for t in by_device), Decimal(0)) == expected
        assert queries.evaluate_meter(s, _Meter("sum"), tenant, "acct-a", T0, END) == expected
        assert _totals(s, tenant, group_by=(), aggregation="max")[0].value == Decimal(10**12)
        billed = period_usage(
            s, tenant_id=tenant, account_id="acct-a", start=T0, end=END, cutoff=END,
            aggregations=("sum",),
        )  # fmt: skip
        assert billed == {"sum": {("prod", "api.calls"): expected}}


def test_a_device_filter_reads_through_the_key_index(session: Session, seeded: str) -> None:
    """No (tenant_id, device_id, recorded_at) index since 0007_usage_ingest: a device's
    records are found through the key (device_id first), not by scanning the tenant."""
    flt = queries.RecordFilter(tenant_id=seeded, start=T0, end=END, device_id="dev-a")
    query = select(func.count()).select_from(UsageRecord).where(*flt.clauses())
    bind = session.get_bind()
    sql = str(query.compile(bind, compile_kwargs={"literal_binds": True}))
    if bind.dialect.name == "sqlite":
        plan = " ".join(str(row[-1]) for row in session.execute(text(f"EXPLAIN QUERY PLAN {sql}")))
        assert "sqlite_autoindex_usage_records_1 (device_id=?" in plan
    assert session.scalar(query) == 6  # dev-a's records, all of them in the window
