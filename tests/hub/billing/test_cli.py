"""``hub billing preview``, routed into the test app (and ``--local``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from hub.cli import common as cli_common
from hub.cli.billing import billing_app
from tests.hub.conftest import TenantKeys

runner = CliRunner()
PLAN = {
    "currency": "EUR",
    "model": "graduated",
    "tiers": [
        {"up_to": 100, "unit_price": "0.10", "flat_fee": "5.00"},
        {"up_to": 1000, "unit_price": "0.05", "flat_fee": "2.00"},
        {"up_to": None, "unit_price": "0.01"},
    ],
}


@pytest.fixture(autouse=True)
def route_to_app(app: FastAPI, monkeypatch: pytest.MonkeyPatch) -> None:
    def make_client(api_url: str, api_key: str | None) -> httpx.Client:
        return TestClient(app, headers={"Authorization": f"Bearer {api_key}"})

    monkeypatch.setattr(cli_common, "make_client", make_client)


def run(tenant: TenantKeys, *args: str, stdin: str | None = None) -> Any:
    return runner.invoke(billing_app, ["preview", "--api-key", tenant.viewer, *args], input=stdin)


def test_inline_plan_json(tenant: TenantKeys) -> None:
    result = run(tenant, json.dumps(PLAN), "1001", "--json")
    assert result.exit_code == 0, result.output
    body = json.loads(result.output)
    assert (body["total"], body["total_decimal"]) == (6201, "62.01")
    assert [line["amount"] for line in body["lines"]] == [1500, 4700, 1]


def test_plan_file_and_table(tenant: TenantKeys, tmp_path: Path) -> None:
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(PLAN), encoding="utf-8")
    result = run(tenant, str(path), "101")
    assert result.exit_code == 0, result.output
    assert "total: 17.05 EUR (1705 minor units)" in result.output
    assert "tier 2: over" in result.output
    assert "2.05" in result.output  # one unit at 0.05 plus the 2.00 flat fee


def test_plan_from_stdin_and_fractional_quantity(tenant: TenantKeys) -> None:
    result = run(tenant, "-", "100.5", "--json", stdin=json.dumps(PLAN))
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["total"] == 1703


def test_huge_quantity(tenant: TenantKeys) -> None:
    result = run(tenant, "--json", json.dumps(PLAN), str(10**18))
    assert json.loads(result.output)["total"] == 10**18 + 5200
    table = run(tenant, json.dumps(PLAN), str(10**18))
    assert "…" not in table.output  # numbers fold, never truncate
    assert "10000000000000052.00 EUR" in table.output


def test_local_pricing_needs_no_hub() -> None:
    result = runner.invoke(billing_app, ["preview", json.dumps(PLAN), "1001", "--local", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["total"] == 6201


def test_local_and_remote_agree(tenant: TenantKeys) -> None:
    args = [json.dumps(PLAN), "123.456", "--json"]
    remote = run(tenant, *args)
    local = runner.invoke(billing_app, ["preview", *args, "--local"])
    assert json.loads(remote.output) == json.loads(local.output)


@pytest.mark.parametrize("local", [False, True])
def test_invalid_plan_exits_1_with_the_typed_error(tenant: TenantKeys, local: bool) -> None:
    plan = {**PLAN, "tiers": [{"up_to": 100}, {"up_to": 50}, {"up_to": None}]}
    result = run(tenant, json.dumps(plan), "1", *(["--local"] if local else []))
    assert result.exit_code == 1
    assert "invalid_plan" in result.output
    assert "tiers[1].up_to" in result.output


@pytest.mark.parametrize("local", [False, True])
@pytest.mark.parametrize(
    ("quantity", "code"),
    [("-1", "invalid_quantity"), ("NaN", "invalid_quantity"), ("abc", "validation_failed")],
)
def test_bad_quantity_exits_1(tenant: TenantKeys, local: bool, quantity: str, code: str) -> None:
    flags = ["--local"] if local else []
    result = run(tenant, *flags, "--", json.dumps(PLAN), quantity)
    assert result.exit_code == 1
    assert code in result.output


@pytest.mark.parametrize("local", [False, True])
def test_float_money_is_refused(tenant: TenantKeys, local: bool) -> None:
    plan = {"currency": "EUR", "model": "per_unit", "unit_price": 0.1}
    result = run(tenant, json.dumps(plan), "1", *(["--local"] if local else []))
    assert result.exit_code == 1
    assert "floats are refused" in result.output


def test_unreadable_plans(tenant: TenantKeys, tmp_path: Path) -> None:
    result = run(tenant, str(tmp_path / "missing.json"), "1")
    assert result.exit_code == 1
    assert "no such plan file" in result.output
    result = run(tenant, "{not json", "1")
    assert result.exit_code == 1
    assert "not valid JSON" in result.output
