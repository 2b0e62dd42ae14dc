"""Invoice exports (CSV and JSON) over the API and ``hub billing invoices ...``; leakage."""

from __future__ import annotations

import csv
import io
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from hub.billing.exports import CSV_COLUMNS
from hub.cli import common as cli_common
from hub.cli.billing import billing_app
from tests.hub.billing.conftest import API, FEB, GRACE, JAN, Biller
from tests.hub.billing.test_closing import GRADUATED

runner = CliRunner()
LATEST = {"currency": "EUR", "model": "per_unit", "unit_price": "1.00"}


@pytest.fixture(autouse=True)
def route_to_app(app: FastAPI, monkeypatch: pytest.MonkeyPatch) -> None:
    def make_client(api_url: str, api_key: str | None) -> httpx.Client:
        return TestClient(app, headers={"Authorization": f"Bearer {api_key}"})

    monkeypatch.setattr(cli_common, "make_client", make_client)


def two_invoices(biller: Biller) -> None:
    """January: calls and a gauge; February: calls and a *negative* gauge adjustment."""
    biller.feature("-gauge", cap_per_period=1000, period="month")  # read as a formula
    biller.plan(GRADUATED)
    biller.plan(LATEST, meter="-gauge", aggregation="latest")
    biller.usage(150, JAN[0] + timedelta(days=1))
    biller.usage(10, JAN[0] + timedelta(days=1), meter="-gauge")
    biller.run(JAN[1] + GRACE)
    # A later reading of January's gauge arrives after the close: latest drops to 4.
    biller.usage(4, JAN[1] - timedelta(seconds=1), JAN[1] + GRACE * 2, meter="-gauge")
    biller.usage(7, FEB[0] + timedelta(days=1))
    biller.run(FEB[1] + GRACE)


def cli(biller: Biller, *args: str) -> Any:
    return runner.invoke(billing_app, [*args, "--api-key", biller.shop.tenant.viewer])


def test_negative_adjustment_for_a_latest_meter(biller: Biller) -> None:
    two_invoices(biller)
    jan, feb = biller.invoices()
    assert [(ln["meter"], ln["amount"]) for ln in jan["lines"]] == [
        ("-gauge", 1000),
        ("api.calls", 1000 + 250 + 200),
    ]
    usage, adjustment = feb["lines"]
    assert (adjustment["kind"], adjustment["quantity"], adjustment["amount"]) == (
        "adjustment",
        "-6",
        -600,
    )
    assert feb["adjustments"] == -600 and feb["total"] == usage["amount"] - 600 == -530
    assert biller.audit()["ok"] is True


def test_csv_export_over_the_api(biller: Biller) -> None:
    two_invoices(biller)
    response = biller.client.get(f"{API}/invoices?format=csv", headers=biller.headers("viewer"))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    assert "attachment" in response.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert [(r["invoice_number"], r["line"], r["kind"]) for r in rows] == [
        ("INV-000001", "1", "usage"),
        ("INV-000001", "2", "usage"),
        ("INV-000002", "1", "usage"),
        ("INV-000002", "2", "adjustment"),
    ]
    assert rows[0]["meter"] == "'-gauge"  # formula-escaped text
    assert (rows[3]["quantity"], rows[3]["amount"], rows[3]["amount_decimal"]) == (
        "-6",
        "-600",
        "-6.00",
    )
    assert rows[3]["charge_period_start"].startswith("2030-01-01")
    assert rows[3]["period_start"].startswith("2030-02-01")
    assert {r["invoice_total"] for r in rows[2:]} == {"-530"}


def test_json_exports_match_the_api(biller: Biller) -> None:
    two_invoices(biller)
    listed = biller.invoices()
    everything = biller.client.get(f"{API}/invoices?format=json", headers=biller.headers("viewer"))
    assert everything.headers["content-type"].startswith("application/json")
    assert json.loads(everything.text)["invoices"] == listed
    one = biller.client.get(
        f"{API}/invoices/{listed[1]['id']}?format=json", headers=biller.headers("viewer")
    )
    assert json.loads(one.text)["invoices"] == [listed[1]]
    single_csv = biller.client.get(
        f"{API}/invoices/{listed[1]['id']}?format=csv", headers=biller.headers("viewer")
    )
    assert len(list(csv.DictReader(io.StringIO(single_csv.text)))) == 2
    assert "invoice-INV-000002.csv" in single_csv.headers["content-disposition"]
    bad = biller.client.get(f"{API}/invoices?format=xml", headers=biller.headers("viewer"))
    assert bad.status_code == 422


def test_filters_and_isolation(biller: Biller, other_biller: Biller) -> None:
    two_invoices(biller)
    feb = biller.invoices(since=FEB[0].isoformat())
    assert [i["number"] for i in feb] == ["INV-000002"]
    assert biller.invoices(status="draft") == []
    invoice_id = feb[0]["id"]
    assert other_biller.get(f"/invoices/{invoice_id}").status_code == 404
    assert other_biller.get(f"/invoices/{invoice_id}", format="csv").status_code == 404
    assert other_biller.post(f"/invoices/{invoice_id}/finalize").status_code == 404
    assert other_biller.invoices() == []
    empty = other_biller.client.get(
        f"{API}/invoices?format=csv", headers=other_biller.headers("viewer")
    )
    assert empty.text.strip() == ",".join(CSV_COLUMNS)


def test_cli_list_show_export(biller: Biller, tmp_path: Path) -> None:
    two_invoices(biller)
    listed = cli(biller, "invoices", "list", "--json")
    assert listed.exit_code == 0, listed.output
    items = json.loads(listed.output)["items"]
    assert [i["number"] for i in items] == ["INV-000001", "INV-000002"]
    shown = cli(biller, "invoices", "show", items[1]["id"])
    assert shown.exit_code == 0, shown.output
    assert "total: -5.30 EUR" in shown.output
    out = tmp_path / "all.csv"
    exported = cli(biller, "invoices", "export", "--format", "csv", "--out", str(out))
    assert exported.exit_code == 0, exported.output
    assert len(list(csv.DictReader(out.open(encoding="utf-8")))) == 4
    single = cli(biller, "invoices", "export", items[0]["id"], "--format", "json")
    assert single.exit_code == 0, single.output
    assert json.loads(single.output)["invoices"][0]["number"] == "INV-000001"
    missing = cli(biller, "invoices", "show", "no-such-invoice")
    assert missing.exit_code == 1 and "not_found" in missing.output


def test_cli_plans_run_periods_and_events(biller: Biller) -> None:
    admin = biller.shop.tenant.admin
    plan = json.dumps({"currency": "EUR", "model": "flat", "amount": "5"})
    made = runner.invoke(
        billing_app,
        ["plans", "create", biller.product_id, plan, "--active-from", "2029-12-01T00:00:00",
         "--json", "--api-key", admin],
    )  # fmt: skip
    assert made.exit_code == 0, made.output
    plan_id = json.loads(made.output)["id"]
    listed = cli(biller, "plans", "list", biller.product_id)
    assert listed.exit_code == 0 and "(recurring" in listed.output
    bad = runner.invoke(
        billing_app,
        ["plans", "create", biller.product_id,
         '{"currency":"EUR","model":"volume","tiers":[{"up_to":5},{"up_to":2},{"up_to":null}]}',
         "--meter", "api.calls", "--api-key", admin],
    )  # fmt: skip
    assert bad.exit_code == 1 and "invalid_plan" in bad.output and "tiers[1].up_to" in bad.output
    ran = runner.invoke(billing_app, ["run", "--api-key", admin, "--json"])
    assert ran.exit_code == 0, ran.output
    assert json.loads(ran.output)["opened"] == 1  # the test clock is still in January
    periods = cli(biller, "periods", "--json")
    assert json.loads(periods.output)["items"][0]["status"] == "open"
    events = cli(biller, "events", "--json")
    assert json.loads(events.output)["items"] == []
    deleted = runner.invoke(
        billing_app, ["plans", "delete", biller.product_id, plan_id, "--api-key", admin]
    )
    assert deleted.exit_code == 0 and "deleted" in deleted.output


def test_leakage_report(biller: Biller) -> None:
    biller.feature("energy", cap_per_period=10, period="month")
    biller.plan(GRADUATED)
    biller.usage(5, JAN[0] + timedelta(days=1))  # priced, within cap: no leak
    biller.usage(7, JAN[0] + timedelta(days=2), covered=False, device=1)
    biller.usage(3, JAN[0] + timedelta(days=3), over_cap=True)
    biller.usage(2, JAN[0] + timedelta(days=4), meter="energy")  # covered, no plan
    found = biller.ok(biller.get("/billing/leakage", since=JAN[0].isoformat(),
                                 until=JAN[1].isoformat()))  # fmt: skip
    rows = sorted((r["kind"], r["meter"], r["quantity"], r["device_id"]) for r in found)
    assert rows == [
        ("over_cap", "api.calls", "3", biller.devices[0]),
        ("uncovered", "api.calls", "7", biller.devices[1]),
        ("unpriced", "energy", "2", biller.devices[0]),
    ]
    biller.run(JAN[1] + timedelta(minutes=1))
    [period] = biller.ok(biller.get("/billing/periods"))["items"][:1]
    by_period = biller.ok(biller.get("/billing/leakage", period_id=period["id"]))
    assert sorted(r["kind"] for r in by_period) == ["over_cap", "unpriced"]  # its account only
    cli_rows = cli(biller, "leakage", "--period-id", period["id"], "--json")
    assert cli_rows.exit_code == 0 and len(json.loads(cli_rows.output)) == 2
    assert biller.get("/billing/leakage", period_id="nope").status_code == 404
