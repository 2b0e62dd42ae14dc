"""``hub analytics``: tables and JSON, routed into the test app."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from hub.cli import common as cli_common
from hub.cli.analytics import analytics_app, duration
from tests.hub.analytics.conftest import Shop, at
from tests.hub.conftest import Clock

runner = CliRunner()


@pytest.fixture(autouse=True)
def route_to_app(app: FastAPI, monkeypatch: pytest.MonkeyPatch) -> None:
    def make_client(api_url: str, api_key: str | None) -> httpx.Client:
        return TestClient(app, headers={"Authorization": f"Bearer {api_key}"})

    monkeypatch.setattr(cli_common, "make_client", make_client)
    monkeypatch.setattr(cli_common.console, "width", 200)  # whole ids and names


@pytest.fixture
def fleet(shop: Shop, clock: Clock) -> dict[str, str]:
    """Two activated devices (one leaking), an idle entitlement; the clock two days on."""
    ent = shop.grant("perpetual", quantity=2)
    a, b = shop.device("A1", claimed=True), shop.device("B1")
    shop.activate(ent, a, at(seconds=45))
    shop.activate(ent, b, at(hours=3, minutes=2))
    shop.ack(a, shop.issue(a, at(hours=4)), at(hours=4))
    idle = shop.grant("node_locked")
    clock.now = at(days=2)
    return {"ent": ent, "idle": idle, "a": a}


def run(shop: Shop, *args: str) -> Any:
    result = runner.invoke(analytics_app, [*args, "--api-key", shop.tenant.viewer])
    assert result.exit_code == 0, result.output
    return result.output


def run_json(shop: Shop, *args: str) -> Any:
    return json.loads(run(shop, *args, "--json"))


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(None, "-"), (45.4, "45s"), (723, "12m 3s"), (10_920, "3h 2m"), (187_200, "2d 4h")],
)
def test_duration(seconds: float | None, text: str) -> None:
    assert duration(seconds) == text


def test_time_to_activate(shop: Shop, fleet: dict[str, str]) -> None:
    table = run(shop, "time-to-activate")
    assert "GW" in table and "45s" in table and "3h 2m" in table and "percentiles" in table
    body = run_json(shop, "time-to-activate", "--since", "2030-01-01T13:00:00")
    assert body["products"][0]["seconds"]["count"] == 1


def test_license_models(shop: Shop, fleet: dict[str, str]) -> None:
    table = run(shop, "license-models")
    assert "perpetual" in table and "node_locked" in table and "devices covered: 2" in table
    body = run_json(shop, "license-models")
    assert body["models"][0]["devices_covered"] == 2


def test_unused_entitlements(shop: Shop, fleet: dict[str, str]) -> None:
    table = run(shop, "unused-entitlements", "--idle-days", "7")
    assert "Acme" in table and "no_activation" in table and "1-1 of 1" in table
    body = run_json(shop, "unused-entitlements", "--limit", "1")
    assert [i["entitlement_id"] for i in body["items"]] == [fleet["idle"]]


def test_leakage(shop: Shop, fleet: dict[str, str]) -> None:
    assert "no leakage" in run(shop, "leakage")
    shop.revoke(fleet["ent"], at(days=2))
    table = run(shop, "leakage")
    assert "1 device(s) leaking" in table and "not_entitled" in table
    assert "enabled limit=5" in table and "disabled" in table
    assert "acknowledged 1 checked" in table
    assert len(run_json(shop, "leakage")["findings"]) == 3


def test_history(shop: Shop, fleet: dict[str, str]) -> None:
    table = run(shop, "history", shop.account_id)
    assert "entitlement.create" in table and "activation.create" in table
    body = run_json(shop, "history", shop.account_id, "--limit", "1")
    assert body["total"] == 4 and body["items"][0]["action"] == "activation.create"


def test_errors_exit_1(shop: Shop) -> None:
    result = runner.invoke(analytics_app, ["history", "nope", "--api-key", shop.tenant.viewer])
    assert result.exit_code == 1 and "not_found" in result.output
    assert runner.invoke(analytics_app, ["leakage"], env={"HUB_API_KEY": ""}).exit_code == 1
