"""The entitlements command line, routed into the test app."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from hub.cli import common as cli_common
from hub.cli.entitlements import entitlements_app
from tests.hub.conftest import TenantKeys
from tests.hub.entitlements.conftest import World

runner = CliRunner()


@pytest.fixture(autouse=True)
def route_to_app(app: FastAPI, monkeypatch: pytest.MonkeyPatch) -> None:
    def make_client(api_url: str, api_key: str | None) -> httpx.Client:
        return TestClient(app, headers={"Authorization": f"Bearer {api_key}"})

    monkeypatch.setattr(cli_common, "make_client", make_client)


def run(tenant: TenantKeys, *args: str) -> Any:
    return runner.invoke(entitlements_app, [*args, "--api-key", tenant.operator])


def run_json(tenant: TenantKeys, *args: str) -> Any:
    result = run(tenant, *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_cli_round_trip(world: World) -> None:
    t = world.tenant
    account = run_json(t, "accounts", "create", "--name", "Globex", "--external-ref", "crm-9")
    assert run_json(t, "accounts", "list")["total"] == 2
    feature = run_json(t, "features", "create", "--product-id", world.product_id, "--key", "sso")
    assert feature["kind"] == "flag"
    metered = run_json(
        t,
        "features",
        "create",
        "--product-id",
        world.product_id,
        "--key",
        "sms",
        "--kind",
        "metered",
        "--cap",
        "10",
        "--period",
        "day",
        "--overage",
        "flag",
    )
    assert metered["overage"] == "flag"
    assert run_json(t, "features", "list", world.product_id)["total"] == 5
    ent = run_json(
        t,
        "entitlements",
        "create",
        "--account-id",
        account["id"],
        "--product-id",
        world.product_id,
        "--model",
        "subscription",
        "--ends-at",
        "2030-03-01T00:00:00",
        "--overrides",
        '{"users": {"limit": 12}}',
        "--reason",
        "PO-1",
    )
    device = world.device("CLI-E1")
    spare = world.device("CLI-E2")
    change = run_json(t, "activations", "add", ent["id"], device)
    assert change["affected_device_ids"] == [device]
    view = run_json(t, "entitlements", "device", device)
    assert view["features"]["users"]["limit"] == 12
    assert (
        run_json(t, "entitlements", "suspend", ent["id"], "--reason", "late")["entitlement"][
            "status"
        ]
        == "suspended"
    )
    assert run_json(t, "entitlements", "resume", ent["id"])["entitlement"]["status"] == "active"
    renewed = run_json(t, "entitlements", "renew", ent["id"], "--term-seconds", "86400")
    assert renewed["entitlement"]["ends_at"].startswith("2030-03-02")
    moved = run_json(
        t,
        "entitlements",
        "rehost",
        ent["id"],
        "--from",
        device,
        "--to",
        spare,
        "--temporary-seconds",
        "600",
    )
    assert moved["affected_device_ids"] == sorted([device, spare])
    assert (
        run_json(t, "activations", "confirm-rehost", ent["id"], spare)["activation"][
            "temporary_until"
        ]
        is None
    )
    assert len(run_json(t, "activations", "list", ent["id"], "--include-closed")) == 2
    run_json(t, "activations", "remove", ent["id"], spare)
    assert (
        run_json(t, "entitlements", "list", "--status", "active", "--model", "subscription")[
            "total"
        ]
        == 1
    )
    assert run_json(t, "entitlements", "get", ent["id"])["id"] == ent["id"]
    revoked = run(t, "entitlements", "revoke", ent["id"], "--reason", "churn")
    assert revoked.exit_code == 0 and "affected devices" in revoked.output
    history = run_json(t, "accounts", "history", account["id"])
    assert history["items"][0]["action"] == "entitlement.revoke"
    assert run_json(t, "entitlements", "history", ent["id"])["total"] == len(history["items"])
    table = run(t, "entitlements", "device", device)
    assert table.exit_code == 0 and "users" in table.output


def test_cli_errors_are_clear(world: World) -> None:
    bad = run(
        world.tenant,
        "entitlements",
        "create",
        "--account-id",
        world.account_id,
        "--product-id",
        world.product_id,
        "--model",
        "perpetual",
        "--overrides",
        '{"ghost": {}}',
    )
    assert bad.exit_code == 1 and "unknown_feature" in bad.output
    assert (
        run(
            world.tenant,
            "entitlements",
            "create",
            "--account-id",
            "a",
            "--product-id",
            "p",
            "--model",
            "perpetual",
            "--overrides",
            "{nope",
        ).exit_code
        == 1
    )
