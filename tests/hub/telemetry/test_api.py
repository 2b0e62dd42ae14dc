"""``/api/v1/usage`` and ``/api/v1/meters`` over the test app, on every backend."""

from __future__ import annotations

import csv
import io
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from hub.audit.models import AuditEvent
from tests.hub.analytics.conftest import T0
from tests.hub.conftest import Clock, TenantKeys
from tests.hub.telemetry.conftest import TS0, UsageShop, rec

API = "/api/v1"


@pytest.fixture
def fed(usage: UsageShop, clock: Clock) -> UsageShop:
    """Two devices' usage: conflicts, quarantine, rejections, a gap, an uncovered device."""
    a, b = usage.devices
    usage.send(a, [rec(1, 2.5, dim="alice"), rec(2, 1, dim="bob"), rec(4, 3, dim="=1+1")])
    usage.send(a, [rec(1, 9)])  # conflict
    usage.send(b, [rec(1, 10), rec(2, 60, meter="storage"), rec(3, -1)])  # over cap, rejected
    usage.send(b, [rec(4, ts=TS0 + 10 * 86_400)])  # future: quarantined
    idle = usage.shop.device("IDLE", claimed=True)
    usage.send(idle, [rec(1, 7)])
    usage.devices.append(idle)
    clock.now = T0 + timedelta(days=2)
    return usage


def get(client: TestClient, tenant: TenantKeys, path: str, **params: Any) -> Any:
    response = client.get(API + path, params=params, headers=tenant.headers("viewer"))
    assert response.status_code == 200, response.text
    return response.json()


def test_totals_per_account_and_meter(client: TestClient, fed: UsageShop) -> None:
    body = get(client, fed.shop.tenant, "/usage")
    assert body["group_by"] == ["account_id", "meter"] and body["aggregation"] == "sum"
    assert body["start"].startswith("2030-01-01T00:00:00") and body["end"].startswith("2030-02-01")
    got = {
        (i["keys"]["account_id"], i["keys"]["meter"]): (i["value"], i["records"])
        for i in body["items"]
    }
    acme = fed.shop.account_id
    assert got == {
        (acme, "api.calls"): ("16.5", 4),
        (acme, "storage"): ("60", 1),
        (None, "api.calls"): ("7", 1),
    }


def test_totals_other_groupings_and_aggregations(client: TestClient, fed: UsageShop) -> None:
    tenant = fed.shop.tenant
    a = fed.devices[0]
    body = get(client, tenant, "/usage", group_by="device_id,day", meter="api.calls")
    assert {(i["keys"]["device_id"], i["keys"]["day"]) for i in body["items"]} == {
        (d, "2030-01-01") for d in (fed.devices[0], fed.devices[1], fed.devices[2])
    }
    body = get(client, tenant, "/usage", device_id=a, group_by="", aggregation="unique_count")
    assert body["items"] == [{"keys": {}, "value": "3", "records": 3}]
    body = get(client, tenant, "/usage", device_id=a, group_by=["meter"], aggregation="max")
    assert body["items"][0]["value"] == "3"
    late = get(client, tenant, "/usage", by="received", start="2030-01-01T13:00:01", group_by="")
    assert late["items"] == [] and late["by"] == "received"
    received = get(client, tenant, "/usage", by="received", end="2030-01-01T13:00:01", group_by="")
    assert received["items"][0]["records"] == 6


def test_records_page(client: TestClient, fed: UsageShop) -> None:
    tenant = fed.shop.tenant
    a = fed.devices[0]
    body = get(client, tenant, "/usage/records", device_id=a, limit=2)
    assert body["total"] == 3 and len(body["items"]) == 2
    first = body["items"][0]
    assert first["quantity"] == "2.5" and first["dimension"] == "alice" and first["seq"] == 1
    assert first["account_id"] == fed.shop.account_id and first["over_cap"] is False
    rest = get(client, tenant, "/usage/records", device_id=a, limit=2, offset=2)
    assert [i["seq"] for i in rest["items"]] == [4]


def test_exports_csv_and_json_agree(client: TestClient, fed: UsageShop) -> None:
    tenant = fed.shop.tenant
    response = client.get(
        f"{API}/usage/export", params={"format": "csv"}, headers=tenant.headers("viewer")
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    assert "attachment" in response.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(response.text)))
    body = get(client, tenant, "/usage/export", format="json")
    assert len(rows) == len(body) == 6
    assert [r["seq"] for r in rows] == [str(i["seq"]) for i in body]
    by_dim = {r["dimension"]: r for r in rows}
    assert by_dim["'=1+1"]["quantity"] == "3"  # a formula is never exported as one
    assert {i["dimension"] for i in body} >= {"=1+1", "alice"}
    over = [i for i in body if i["over_cap"]]
    assert [(i["meter"], i["quantity"]) for i in over] == [("storage", "60")]
    only = get(client, tenant, "/usage/export", format="json", device_id=fed.devices[2])
    assert [(i["account_id"], i["quantity"]) for i in only] == [(None, "7")]


def test_empty_export_is_valid(client: TestClient, fed: UsageShop) -> None:
    tenant = fed.shop.tenant
    assert get(client, tenant, "/usage/export", format="json", meter="none") == []
    response = client.get(
        f"{API}/usage/export", params={"meter": "none"}, headers=tenant.headers("viewer")
    )
    assert response.text.splitlines() == [
        "id,device_id,boot_epoch,seq,meter,quantity,dimension,recorded_at,received_at,"
        "account_id,product_id,entitlement_id,over_cap"
    ]


def test_side_tables(client: TestClient, fed: UsageShop) -> None:
    tenant = fed.shop.tenant
    a, b = fed.devices[0], fed.devices[1]
    gaps = get(client, tenant, "/usage/gaps", open="true")
    assert [(g["device_id"], g["first_missing_seq"], g["missing"]) for g in gaps["items"]] == [
        (a, 3, 1)
    ]
    conflicts = get(client, tenant, "/usage/conflicts")
    assert [(c["device_id"], c["seq"], c["quantity"]) for c in conflicts["items"]] == [(a, 1, "9")]
    quarantine = get(client, tenant, "/usage/quarantine", device_id=b)
    assert [(q["seq"], q["reason"]) for q in quarantine["items"]] == [(4, "future")]
    rejections = get(client, tenant, "/usage/rejections")
    assert [(r["seq"], "negative" in r["reason"]) for r in rejections["items"]] == [(3, True)]


def test_leakage(client: TestClient, fed: UsageShop) -> None:
    body = get(client, fed.shop.tenant, "/usage/leakage")
    assert [(i["keys"]["device_id"], i["value"]) for i in body["uncovered"]] == [
        (fed.devices[2], "7")
    ]
    assert [(i["keys"]["meter"], i["value"]) for i in body["over_cap"]] == [("storage", "60")]
    assert body["uncovered_total"] == "7" and body["over_cap_total"] == "60"


def test_tenant_isolation(client: TestClient, fed: UsageShop, other_tenant: TenantKeys) -> None:
    assert get(client, other_tenant, "/usage")["items"] == []
    assert get(client, other_tenant, "/usage/export", format="json") == []
    assert get(client, other_tenant, "/usage/gaps")["total"] == 0
    for path, params in (
        ("/usage", {"device_id": fed.devices[0]}),
        ("/usage/records", {"account_id": fed.shop.account_id}),
        ("/usage/export", {"device_id": fed.devices[0]}),
        ("/usage/conflicts", {"device_id": fed.devices[0]}),
    ):
        response = client.get(API + path, params=params, headers=other_tenant.headers("viewer"))
        assert response.status_code == 404, (path, response.text)
    assert client.get(f"{API}/usage").status_code == 401


@pytest.mark.parametrize(
    "params",
    [
        {"aggregation": "avg"},
        {"group_by": "tenant_id"},
        {"start": "2030-02-01T00:00:00", "end": "2030-01-01T00:00:00"},
        {"by": "sent"},
    ],
)
def test_bad_queries_are_422(client: TestClient, fed: UsageShop, params: dict[str, str]) -> None:
    response = client.get(f"{API}/usage", params=params, headers=fed.shop.tenant.headers("viewer"))
    assert response.status_code == 422, response.text
    assert response.json()["error"] == "validation_failed"


def test_meters(client: TestClient, fed: UsageShop, other_tenant: TenantKeys) -> None:
    tenant = fed.shop.tenant
    body = {"name": "calls", "feature_key": "api.calls", "aggregation": "sum"}
    assert (
        client.post(f"{API}/meters", json=body, headers=tenant.headers("viewer")).status_code == 403
    )
    created = client.post(f"{API}/meters", json=body, headers=tenant.headers("operator"))
    assert created.status_code == 201, created.text
    meter = created.json()
    assert client.post(f"{API}/meters", json=body, headers=tenant.headers()).status_code == 409
    unknown = {"name": "x", "feature_key": "vpn", "aggregation": "sum"}
    assert client.post(f"{API}/meters", json=unknown, headers=tenant.headers()).status_code == 422
    users = {"name": "users", "feature_key": "api.calls", "aggregation": "unique_count"}
    assert client.post(f"{API}/meters", json=users, headers=tenant.headers()).status_code == 201
    assert get(client, tenant, "/meters")["total"] == 2
    assert get(client, tenant, "/meters/calls")["id"] == meter["id"]
    value = get(client, tenant, f"/meters/{meter['id']}/value")
    assert {i["keys"]["account_id"]: i["value"] for i in value["items"]} == {
        None: "7",
        fed.shop.account_id: "16.5",
    }
    per_device = get(client, tenant, "/meters/users/value", account_id=fed.shop.account_id,
                     group_by="device_id")  # fmt: skip
    assert {i["keys"]["device_id"]: i["value"] for i in per_device["items"]} == {
        fed.devices[0]: "3",
        fed.devices[1]: "0",
    }
    foreign = client.get(f"{API}/meters/{meter['id']}", headers=other_tenant.headers("viewer"))
    assert foreign.status_code == 404
    with fed.factory() as s:
        actions = s.scalars(
            select(AuditEvent.action).where(AuditEvent.target_id == meter["id"])
        ).all()
    assert actions == ["meter.create"]
