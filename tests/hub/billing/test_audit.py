"""``hub billing audit``: every closed period recomputed from the raw usage records.

Negative controls: a tampered invoice line, a deleted usage row and a
duplicated usage row (same content under a new key) are each caught, over
REST and on the command line (exit status 1, each difference listed).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select, update
from typer.testing import CliRunner

from hub.billing.models import Invoice, InvoiceLine
from hub.cli import common as cli_common
from hub.cli.billing import billing_app
from tests.hub.billing.conftest import FEB, GRACE, JAN, Biller
from tests.hub.billing.test_closing import GRADUATED

runner = CliRunner()


@pytest.fixture(autouse=True)
def route_to_app(app: FastAPI, monkeypatch: pytest.MonkeyPatch) -> None:
    def make_client(api_url: str, api_key: str | None) -> httpx.Client:
        return TestClient(app, headers={"Authorization": f"Bearer {api_key}"})

    monkeypatch.setattr(cli_common, "make_client", make_client)


def billed_world(biller: Biller) -> list[tuple[str, int]]:
    """Two closed months with usage, a late record and a recurring fee."""
    biller.plan({"currency": "EUR", "model": "flat", "amount": "9.00"}, meter=None)
    biller.plan(GRADUATED)
    keys = [
        biller.usage(60, JAN[0] + timedelta(days=2)),
        biller.usage(70, JAN[0] + timedelta(days=9), device=1),
    ]
    biller.run(JAN[1] + GRACE)
    keys.append(biller.usage(5, JAN[1] - timedelta(seconds=1), JAN[1] + GRACE * 3))
    keys.append(biller.usage(8, FEB[0] + timedelta(days=1)))
    biller.run(FEB[1] + GRACE)
    return keys


def audit_cli(biller: Biller, *args: str) -> Any:
    return runner.invoke(billing_app, ["audit", "--api-key", biller.shop.tenant.viewer, *args])


def checks(report: dict[str, Any]) -> set[str]:
    return {d["check"] for d in report["differences"]}


def test_clean_billing_passes(biller: Biller) -> None:
    billed_world(biller)
    report = biller.audit()
    assert report["ok"] is True
    assert (report["periods"], report["invoices"], report["records"]) == (2, 2, 4)
    assert report["lines"] == 5  # 2 fees, 2 usage lines, 1 adjustment
    result = audit_cli(biller)
    assert result.exit_code == 0, result.output
    assert "ok: every closed period matches" in result.output


def test_tampered_invoice_line_is_caught(biller: Biller) -> None:
    billed_world(biller)
    with biller.factory() as s:
        line = s.scalars(
            select(InvoiceLine)
            .join(Invoice, Invoice.id == InvoiceLine.invoice_id)
            .where(Invoice.tenant_id == biller.tenant_id, InvoiceLine.kind == "usage")
            .order_by(InvoiceLine.id)
        ).first()
        assert line is not None
        line.amount += 1
        line.cumulative_amount += 1
        s.commit()
    report = biller.audit()
    assert report["ok"] is False
    assert {"amount", "invoice_total"} <= checks(report)
    [amount] = [d for d in report["differences"] if d["check"] == "amount"]
    assert int(amount["stored"]) == int(amount["expected"]) + 1
    assert amount["invoice_number"] == "INV-000001"
    result = audit_cli(biller)
    assert result.exit_code == 1
    assert "amount" in result.output and "invoice_total" in result.output
    assert "difference(s) between invoices and usage" in result.output


def test_tampered_invoice_total_is_caught(biller: Biller) -> None:
    billed_world(biller)
    with biller.factory() as s:
        s.execute(
            update(Invoice)
            .where(Invoice.tenant_id == biller.tenant_id, Invoice.number == "INV-000002")
            .values(total=1)
        )
        s.commit()
    assert checks(biller.audit()) == {"invoice_total"}


def test_deleted_usage_row_is_caught(biller: Biller) -> None:
    keys = billed_world(biller)
    biller.delete_usage(*keys[1])
    report = biller.audit()
    assert report["ok"] is False
    assert {"quantity", "amount", "unbilled_usage"} <= checks(report)
    [quantity] = [d for d in report["differences"] if d["check"] == "quantity"][:1]
    assert (quantity["expected"], quantity["stored"]) == ("60", "130")
    assert audit_cli(biller).exit_code == 1


def test_duplicated_usage_row_is_caught(biller: Biller) -> None:
    billed_world(biller)
    # The same usage again under a key the device never minted: double counting.
    biller.usage(60, JAN[0] + timedelta(days=2), JAN[0] + timedelta(days=2, seconds=5), seq=999)
    report = biller.audit()
    assert report["ok"] is False
    differences = [d for d in report["differences"] if d["check"] == "quantity"]
    assert differences and differences[0]["expected"] == "190"
    result = audit_cli(biller, "--json")
    assert result.exit_code == 1


def test_late_record_after_the_last_close_is_pending_not_a_difference(biller: Biller) -> None:
    billed_world(biller)
    biller.usage(3, FEB[0] + timedelta(days=5), FEB[1] + GRACE * 2)
    report = biller.audit()
    assert report["ok"] is True
    [pending] = report["pending"]
    assert (pending["meter"], pending["records"]) == ("api.calls", 1)


def test_audit_is_tenant_scoped(biller: Biller, other_biller: Biller) -> None:
    billed_world(biller)
    billed_world(other_biller)
    with other_biller.factory() as s:
        s.execute(
            update(Invoice).where(Invoice.tenant_id == other_biller.tenant_id).values(total=0)
        )
        s.commit()
    assert biller.audit()["ok"] is True
    assert other_biller.audit()["ok"] is False
