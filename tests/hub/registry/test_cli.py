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
from hub.cli import registry as cli
from tests.hub.conftest import TenantKeys

runner = CliRunner()


@pytest.fixture(autouse=True)
def route_to_app(app: FastAPI, monkeypatch: pytest.MonkeyPatch) -> None:
    def make_client(api_url: str, api_key: str | None) -> httpx.Client:
        return TestClient(app, headers={"Authorization": f"Bearer {api_key}"})

    monkeypatch.setattr(cli_common, "make_client", make_client)


def run(tenant: TenantKeys, *args: str, role: str = "admin") -> Any:
    result = runner.invoke(cli.registry_app, [*args, "--api-key", getattr(tenant, role)])
    return result


def run_json(tenant: TenantKeys, *args: str) -> Any:
    result = run(tenant, *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_registry_round_trip(tenant: TenantKeys, tmp_path: Path) -> None:
    cls = run_json(
        tenant,
        "classes",
        "create",
        "--name",
        "gw",
        "--vendor-id",
        "fa6b4a53-d5ad-5fdf-be9d-e663e4d41ffe",
        "--class-id",
        "1492af14-2569-5e48-bf42-9b2d51f2ab45",
    )
    device = run_json(
        tenant,
        "devices",
        "create",
        "--serial",
        "CLI-1",
        "--class-id",
        cls["id"],
        "--tag",
        "a",
        "--tag",
        "b",
    )
    assert device["tags"] == ["a", "b"]
    assert run_json(tenant, "devices", "get", device["id"])["serial"] == "CLI-1"
    csv_file = tmp_path / "d.csv"
    csv_file.write_text(f"serial,device_class_id\nCLI-2,{cls['id']}\nCLI-1,{cls['id']}\n")
    result = run(tenant, "devices", "import", str(csv_file))
    assert result.exit_code == 1  # one row failed
    assert "duplicate_serial" in result.output and "created 1, failed 1" in result.output
    listed = run_json(tenant, "devices", "list", "--serial-prefix", "CLI")
    assert listed["total"] == 2
    table = run(tenant, "devices", "list")
    assert table.exit_code == 0 and "CLI-2" in table.output
    batch = run_json(tenant, "claim-batches", "create", "--name", "b", "--serial", "CLI-1")
    assert batch["token"].startswith("hubc_")
    assert run_json(tenant, "claim-batches", "list")["total"] == 1
    product = run_json(tenant, "products", "create", "--sku", "P1", "--name", "p")
    assert run_json(tenant, "products", "list")["items"][0]["id"] == product["id"]
    assert run_json(tenant, "classes", "list")["total"] == 1
    key = run_json(tenant, "api-keys", "create", "--name", "ci", "--role", "viewer")
    assert run_json(tenant, "api-keys", "revoke", key["id"])["revoked_at"] is not None
    assert run_json(tenant, "api-keys", "list")["total"] == 4
    assert run_json(tenant, "devices", "reset-claim", device["id"])["status"] == "registered"
    audit = run_json(tenant, "audit", "list", "--action", "device.create")
    assert audit["total"] == 2


def test_errors_print_server_message_and_exit_1(tenant: TenantKeys) -> None:
    result = run(tenant, "devices", "get", "dev-00000000000000000000")
    assert result.exit_code == 1
    assert "not_found" in result.output and "not found" in result.output
    result = run(tenant, "api-keys", "list", role="viewer")
    assert result.exit_code == 1 and "requires role admin" in result.output


def test_missing_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HUB_API_KEY", raising=False)
    result = runner.invoke(cli.registry_app, ["devices", "list"])
    assert result.exit_code == 1 and "no API key" in result.output


def test_tenant_create_bootstraps_database(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/boot.db"
    result = runner.invoke(cli.tenant_app, ["create", "acme", "--database-url", url, "--json"])
    assert result.exit_code == 0, result.output
    body = json.loads(result.output)
    assert body["api_key"].startswith("hubk_")
    again = runner.invoke(cli.tenant_app, ["create", "acme", "--database-url", url])
    assert again.exit_code == 1 and "already exists" in again.output
