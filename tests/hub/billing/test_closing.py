"""Periods close after the grace window; late records become adjustments on the next invoice."""

from __future__ import annotations

import threading
from datetime import timedelta
from decimal import Decimal
from typing import Any

from hub.billing.plans import parse_plan
from hub.billing.pricing import price
from tests.hub.billing.conftest import FEB, GRACE, JAN, MAR, Biller
from tests.hub.conftest import Clock

SECOND = timedelta(seconds=1)
GRADUATED: dict[str, Any] = {
    "currency": "EUR",
    "model": "graduated",
    "tiers": [
        {"up_to": 100, "unit_price": "0.10"},
        {"up_to": 1000, "unit_price": "0.05", "flat_fee": "2.00"},
        {"up_to": None, "unit_price": "0.01"},
    ],
}


def cost(quantity: int | str, plan: dict[str, Any] = GRADUATED) -> int:
    return price(parse_plan(plan), Decimal(quantity)).total


def periods(biller: Biller) -> list[dict[str, Any]]:
    return list(biller.ok(biller.get("/billing/periods"))["items"])


def test_periods_open_monthly_from_the_subscription_start(biller: Biller) -> None:
    run = biller.run(JAN[1] + timedelta(minutes=30))
    assert (run.opened, run.closing) == (2, 1)
    found = periods(biller)
    assert [(p["seq"], p["status"]) for p in found] == [(0, "closing"), (1, "open")]
    assert found[0]["starts_at"].startswith("2030-01-01T12:00:00")
    assert found[0]["ends_at"].startswith("2030-02-01T12:00:00")
    assert found[1]["ends_at"].startswith("2030-03-01T12:00:00")
    assert biller.run(JAN[1] + timedelta(minutes=31)).opened == 0  # idempotent


def test_a_period_closes_only_after_its_grace_window(biller: Biller) -> None:
    biller.plan(GRADUATED)
    biller.usage(50, JAN[0] + timedelta(days=3))
    end = JAN[1]
    assert biller.run(end - SECOND).closed == []
    assert [p["status"] for p in periods(biller)] == ["open"]
    assert biller.run(end + GRACE - SECOND).closed == []
    assert periods(biller)[0]["status"] == "closing"
    closed = biller.run(end + GRACE).closed
    assert len(closed) == 1 and len(closed[0].invoice_ids) == 1
    assert biller.run(end + GRACE + timedelta(minutes=5)).closed == []  # never twice
    [invoice] = biller.invoices()
    assert invoice["status"] == "finalized"
    assert invoice["number"] == "INV-000001"
    assert invoice["total"] == cost(50) == 500
    assert invoice["usage_cutoff"].startswith("2030-02-01T13:00:00")


def test_late_records_around_the_period_close(biller: Biller) -> None:
    """1 s before the end, before the close: this invoice. After the close: an adjustment
    on the next one. Exactly at the end: the next period."""
    biller.plan(GRADUATED)
    end, cutoff = JAN[1], JAN[1] + GRACE
    biller.usage(90, JAN[0] + timedelta(days=10))
    biller.usage(5, end - SECOND, received_at=cutoff - SECOND)  # before the close
    biller.usage(7, end, received_at=end + SECOND)  # at the boundary: February
    biller.run(cutoff)
    [jan] = biller.invoices()
    [line] = jan["lines"]
    assert (line["kind"], line["quantity"], line["amount"]) == ("usage", "95", cost(95))

    # Arrives after January closed, recorded one second before its end.
    biller.usage(20, end - SECOND, received_at=cutoff + timedelta(minutes=10))
    biller.usage(3, FEB[0] + timedelta(days=2))
    biller.run(FEB[1] + GRACE)
    feb = biller.invoices()[1]
    usage, adjustment = feb["lines"]
    assert (usage["kind"], usage["period_id"]) == ("usage", feb["period_id"])
    assert usage["quantity"] == "10" and usage["amount"] == cost(10)  # 7 at the boundary + 3
    assert adjustment["kind"] == "adjustment"
    assert adjustment["period_id"] == jan["period_id"]
    assert adjustment["period_start"] == jan["period_start"]
    # 95 -> 115 units crosses into tier 2 (+2.00 flat): re-priced, not 20 x 0.10.
    assert adjustment["quantity"] == "20"
    assert adjustment["amount"] == cost(115) - cost(95) == 1275 - 950
    assert adjustment["cumulative_quantity"] == "115"
    assert adjustment["cumulative_amount"] == cost(115)
    assert [b["tier"] for b in adjustment["breakdown"]] == [0, 1]
    assert (feb["subtotal"], feb["adjustments"]) == (cost(10), 325)
    assert feb["total"] == cost(10) + 325
    # January's own invoice never changes.
    assert biller.invoices()[0] == jan
    assert biller.audit()["ok"] is True


def test_late_records_are_adjusted_once_even_across_several_closes(biller: Biller) -> None:
    biller.plan(GRADUATED)
    biller.usage(10, JAN[0] + timedelta(days=1))
    biller.run(JAN[1] + GRACE)
    biller.usage(4, JAN[1] - SECOND, received_at=FEB[0] + timedelta(days=3))
    biller.run(FEB[1] + GRACE)
    biller.usage(6, JAN[1] - SECOND, received_at=MAR[0] + timedelta(days=3))
    biller.run(MAR[1] + GRACE)
    jan, feb, mar = biller.invoices()
    assert [line["kind"] for line in feb["lines"]] == ["adjustment"]
    assert [line["kind"] for line in mar["lines"]] == ["adjustment"]
    assert (feb["lines"][0]["quantity"], mar["lines"][0]["quantity"]) == ("4", "6")
    billed = jan["total"] + feb["total"] + mar["total"]
    assert billed == cost(20) == 200
    assert biller.audit()["ok"] is True


def test_recurring_fee_and_usage_lines(biller: Biller) -> None:
    biller.plan({"currency": "EUR", "model": "per_unit", "unit_price": "19.99"}, meter=None)
    biller.plan(GRADUATED)
    biller.usage(1001, JAN[0] + timedelta(days=5))
    biller.run(JAN[1] + GRACE)
    [invoice] = biller.invoices()
    recurring, usage = invoice["lines"]
    assert recurring["kind"] == "recurring"
    assert recurring["quantity"] == "2"  # the subscription's quantity
    assert recurring["amount"] == 3998
    assert recurring["basis"]["entitlements"][0]["entitlement_id"] == biller.entitlement_id
    assert usage["amount"] == cost(1001) == 1000 + 4500 + 200 + 1
    assert [b["amount"] for b in usage["breakdown"]] == [1000, 4700, 1]
    assert invoice["subtotal"] == invoice["total"] == 3998 + cost(1001)


def test_no_usage_and_no_fee_means_no_invoice(biller: Biller) -> None:
    biller.plan(GRADUATED)
    run = biller.run(JAN[1] + GRACE)
    assert [c.invoice_ids for c in run.closed] == [()]
    assert biller.invoices() == []
    assert periods(biller)[0]["status"] == "closed"


def test_uncovered_and_unpriced_usage_is_not_invoiced(biller: Biller) -> None:
    biller.plan(GRADUATED)
    biller.usage(30, JAN[0] + timedelta(days=1))
    biller.usage(500, JAN[0] + timedelta(days=1), covered=False)
    biller.usage(9, JAN[0] + timedelta(days=2), meter="storage")  # no plan for it
    biller.run(JAN[1] + GRACE)
    [invoice] = biller.invoices()
    assert [(ln["meter"], ln["quantity"]) for ln in invoice["lines"]] == [("api.calls", "30")]


def test_drafts_wait_for_explicit_finalization(biller: Biller) -> None:
    biller.settings = biller.settings.model_copy(update={"auto_finalize": False})
    biller.plan(GRADUATED)
    biller.usage(12, JAN[0] + timedelta(days=1))
    biller.run(JAN[1] + GRACE)
    [draft] = biller.invoices()
    assert (draft["status"], draft["number"]) == ("draft", None)
    assert biller.ok(biller.get("/events"))["items"] == []
    final = biller.ok(biller.post(f"/invoices/{draft['id']}/finalize", role="operator"))
    assert (final["status"], final["number"]) == ("finalized", "INV-000001")
    again = biller.post(f"/invoices/{draft['id']}/finalize", role="operator")
    assert again.status_code == 409
    [event] = biller.ok(biller.get("/events"))["items"]
    assert event["type"] == "invoice.finalized"
    assert event["payload"]["number"] == "INV-000001"
    assert event["payload"]["total"] == 120


def test_invoice_numbers_are_sequential_per_tenant(biller: Biller) -> None:
    biller.plan(GRADUATED)
    for start, _ in (JAN, FEB, MAR):
        biller.usage(1, start + timedelta(days=1))
    biller.run(MAR[1] + GRACE)
    assert [i["number"] for i in biller.invoices()] == ["INV-000001", "INV-000002", "INV-000003"]


def test_plan_in_force_at_the_period_end_prices_the_period(biller: Biller) -> None:
    biller.plan({"currency": "EUR", "model": "per_unit", "unit_price": "1.00"})
    biller.plan(
        {"currency": "EUR", "model": "per_unit", "unit_price": "2.00"},
        active_from=FEB[0] + timedelta(days=10),
    )
    biller.usage(3, JAN[0] + timedelta(days=1))
    biller.usage(3, FEB[0] + timedelta(days=1))  # before the new plan, same period
    biller.run(FEB[1] + GRACE)
    jan, feb = biller.invoices()
    assert (jan["total"], feb["total"]) == (300, 600)
    # A plan an invoice used is frozen.
    plan_id = jan["lines"][0]["plan_id"]
    path = f"/products/{biller.product_id}/price-plans/{plan_id}"
    response = biller.client.delete(f"/api/v1{path}", headers=biller.headers("operator"))
    assert response.status_code == 409


def test_two_workers_closing_at_once_bill_each_period_once(biller: Biller) -> None:
    biller.plan(GRADUATED)
    for start, _ in (JAN, FEB, MAR):
        biller.usage(11, start + timedelta(days=1))
    barrier = threading.Barrier(2)
    results: list[Any] = []

    def worker() -> None:
        barrier.wait()
        results.append(biller.run(MAR[1] + GRACE))

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(results) == 2
    assert sum(len(r.closed) for r in results) == 3
    invoices = biller.invoices()
    assert sorted(i["number"] for i in invoices) == ["INV-000001", "INV-000002", "INV-000003"]
    assert [i["total"] for i in invoices] == [cost(11)] * 3
    assert biller.audit()["ok"] is True


def test_a_plan_added_after_a_close_never_reprices_that_period(
    biller: Biller, clock: Clock
) -> None:
    biller.plan(GRADUATED)
    biller.feature("energy", cap_per_period=1000, period="month")
    biller.usage(40, JAN[0] + timedelta(days=1), meter="energy")  # unpriced in January
    biller.run(JAN[1] + GRACE)
    assert biller.invoices() == []
    clock.now = JAN[1] + GRACE * 2  # backdated: active long before January ended
    biller.plan({"currency": "EUR", "model": "per_unit", "unit_price": "1"}, meter="energy")
    biller.usage(2, JAN[1] - SECOND, JAN[1] + GRACE * 2, meter="energy")  # late, for January
    biller.usage(3, FEB[0] + timedelta(days=1), meter="energy")
    biller.run(FEB[1] + GRACE)
    [feb] = biller.invoices()
    assert [(ln["kind"], ln["quantity"]) for ln in feb["lines"]] == [("usage", "3")]
    assert biller.audit()["ok"] is True
