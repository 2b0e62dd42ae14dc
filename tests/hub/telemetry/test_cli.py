"""``hub usage``: tables, JSON and exports, routed into the test app."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from hub.cli import common as cli_common
from hub.cli.usage import usage_app
from tests.hub.telemetry.conftest import TS0, UsageShop, rec

runner = CliRunner()


@pytest.fixture(autouse=True)
def route_to_app(app: FastAPI, monkeypatch: pytest.MonkeyPatch) -> None:
    def make_client(api_url: str, api_key: str | None) -> httpx.Client:
        return TestClient(app, headers={"Authorization": f"Bearer {api_key}"})

    monkeypatch.setattr(cli_common, "make_client", make_client)
    monkeypatch.setattr(cli_common.console, "width", 250)


@pytest.fixture
def fed(usage: UsageShop) -> UsageShop:
    a, b = usage.devices
    usage.send(a, [rec(1, 2.5, dim="alice"), rec(2, 1, dim="bob"), rec(4, 3)])
    usage.send(a, [rec(1, 9)])
    usage.send(b, [rec(1, 10), rec(2, -1), rec(3, ts=TS0 + 10 * 86_400)])
    return usage


def run(usage: UsageShop, *args: str, role: str = "viewer") -> str:
    key = getattr(usage.shop.tenant, role)
    result = runner.invoke(usage_app, [*args, "--api-key", key])
    assert result.exit_code == 0, result.output
    return result.output


def run_json(usage: UsageShop, *args: str, role: str = "viewer") -> Any:
    return json.loads(run(usage, *args, "--json", role=role))


def test_totals(fed: UsageShop) -> None:
    table = run(fed, "totals")
    assert "api.calls" in table and "16.5" in table and fed.shop.account_id in table
    body = run_json(fed, "totals", "--group-by", "device_id", "--aggregation", "count")
    assert {i["keys"]["device_id"]: i["value"] for i in body["items"]} == {
        fed.devices[0]: "3",
        fed.devices[1]: "1",
    }
    one = run_json(fed, "totals", "--group-by", "", "--start", "2030-01-01", "--end", "2030-01-02")
    assert one["items"] == [{"keys": {}, "value": "16.5", "records": 4}]


def test_records_and_side_tables(fed: UsageShop) -> None:
    a, b = fed.devices
    body = run_json(fed, "records", "--device-id", a, "--limit", "2")
    assert body["total"] == 3 and [i["seq"] for i in body["items"]] == [1, 2]
    assert "alice" in run(fed, "records", "--device-id", a)
    gaps = run_json(fed, "gaps", "--open")
    assert [(g["first_missing_seq"], g["last_missing_seq"]) for g in gaps["items"]] == [(3, 3)]
    assert "first_missing_seq" in run(fed, "gaps")
    assert run_json(fed, "conflicts")["items"][0]["quantity"] == "9"
    assert run_json(fed, "quarantine", "--device-id", b)["items"][0]["reason"] == "future"
    assert "negative" in run(fed, "rejections")
    leak = run_json(fed, "leakage")
    assert leak["uncovered"] == [] and leak["over_cap"] == []
    assert "uncovered 0, over cap 0" in run(fed, "leakage")


def test_export_to_files(fed: UsageShop, tmp_path: Path) -> None:
    target = tmp_path / "usage.csv"
    run(fed, "export", "--format", "csv", "--out", str(target))
    rows = list(csv.DictReader(target.open()))
    assert sorted(r["quantity"] for r in rows) == ["1", "10", "2.5", "3"]
    as_json = tmp_path / "usage.json"
    run(fed, "export", "--format", "json", "--out", str(as_json), "--device-id", fed.devices[1])
    assert [r["quantity"] for r in json.loads(as_json.read_text())] == ["10"]
    assert not list(tmp_path.glob(".*.tmp"))


def test_export_errors_leave_no_file(fed: UsageShop, tmp_path: Path) -> None:
    target = tmp_path / "nope.csv"
    result = runner.invoke(
        usage_app,
        ["export", "--out", str(target), "--device-id", "dev-00000000000000000000",
         "--api-key", fed.shop.tenant.viewer],
    )  # fmt: skip
    assert result.exit_code == 1 and "404" in result.output
    assert not target.exists() and not list(tmp_path.glob(".*.tmp"))
    bad = runner.invoke(usage_app, ["export", "--out", str(target), "--format", "xml",
                                    "--api-key", fed.shop.tenant.viewer])  # fmt: skip
    assert bad.exit_code == 1 and "csv or json" in bad.output


def test_meters(fed: UsageShop) -> None:
    created = run_json(
        fed, "meters", "create", "--name", "calls", "--feature-key", "api.calls",
        "--aggregation", "sum", role="operator",
    )  # fmt: skip
    assert created["aggregation"] == "sum"
    denied = runner.invoke(
        usage_app,
        ["meters", "create", "--name", "x", "--feature-key", "api.calls", "--aggregation",
         "max", "--api-key", fed.shop.tenant.viewer],
    )  # fmt: skip
    assert denied.exit_code == 1 and "403" in denied.output
    assert "calls" in run(fed, "meters", "list")
    value = run_json(fed, "meters", "value", "calls")
    assert {i["keys"]["account_id"]: i["value"] for i in value["items"]} == {
        fed.shop.account_id: "16.5"
    }
    per_device = run(fed, "meters", "value", created["id"], "--group-by", "device_id")
    assert fed.devices[0] in per_device and "6.5" in per_device and "10" in per_device
