"""``POST /api/v1/billing/preview``: charges, breakdowns and typed 422s."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.hub.conftest import TenantKeys

URL = "/api/v1/billing/preview"
GRADUATED: dict[str, Any] = {
    "currency": "EUR",
    "model": "graduated",
    "tiers": [
        {"up_to": 100, "unit_price": "0.10", "flat_fee": "5.00"},
        {"up_to": "1000", "unit_price": "0.05", "flat_fee": "2.00"},
        {"up_to": "inf", "unit_price": "0.01"},
    ],
}


def preview(client: TestClient, tenant: TenantKeys, plan: Any, quantity: Any) -> Any:
    return client.post(
        URL, json={"plan": plan, "quantity": quantity}, headers=tenant.headers("viewer")
    )


def test_graduated_preview(client: TestClient, tenant: TenantKeys) -> None:
    response = preview(client, tenant, GRADUATED, 1001)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["currency"] == "EUR"
    assert body["exponent"] == 2
    assert body["quantity"] == "1001"
    assert body["total"] == 6201
    assert body["total_decimal"] == "62.01"
    assert body["rounding"] == "half_up"
    assert [line["tier"] for line in body["lines"]] == [0, 1, 2]
    assert body["lines"][1] == {
        "kind": "tier",
        "tier": 1,
        "description": "tier 2: over 100 up to 1000",
        "units": "900",
        "unit_price": "0.05",
        "flat_fee": "2.00",
        "exact": "47.00",
        "amount": 4700,
        "amount_decimal": "47.00",
    }


def test_huge_and_fractional_quantities_are_exact(client: TestClient, tenant: TenantKeys) -> None:
    body = preview(client, tenant, GRADUATED, 10**18).json()
    assert body["total"] == 10**18 + 5200
    assert body["quantity"] == "1000000000000000000"
    body = preview(client, tenant, GRADUATED, "1E+18").json()
    assert body["total"] == 10**18 + 5200
    body = preview(client, tenant, GRADUATED, "100.5").json()
    assert body["total"] == 1703


@pytest.mark.parametrize(
    ("plan", "quantity", "total", "total_decimal"),
    [
        ({"currency": "EUR", "model": "flat", "amount": "49"}, 0, 4900, "49.00"),
        ({"currency": "EUR", "model": "per_unit", "unit_price": "0.0015"}, 1000, 150, "1.50"),
        ({"currency": "JPY", "model": "per_unit", "unit_price": "0.5"}, 3, 2, "2"),
        (
            {"currency": "KWD", "exponent": 3, "model": "per_unit", "unit_price": "0.0005"},
            2468,
            1234,
            "1.234",
        ),
        (
            {"currency": "EUR", "model": "volume", "tiers": GRADUATED["tiers"]},
            101,
            705,
            "7.05",
        ),
        (
            {"currency": "EUR", "model": "package", "package_size": 100, "package_price": "2.50"},
            101,
            500,
            "5.00",
        ),
        (
            {
                "currency": "EUR",
                "model": "allowance",
                "included": "1000",
                "overage": {"model": "per_unit", "unit_price": "0.01"},
            },
            "1500",
            500,
            "5.00",
        ),
    ],
)
def test_every_model(
    client: TestClient,
    tenant: TenantKeys,
    plan: dict[str, Any],
    quantity: Any,
    total: int,
    total_decimal: str,
) -> None:
    response = preview(client, tenant, plan, quantity)
    assert response.status_code == 200, response.text
    assert (response.json()["total"], response.json()["total_decimal"]) == (total, total_decimal)


def test_requires_an_api_key(client: TestClient) -> None:
    response = client.post(URL, json={"plan": GRADUATED, "quantity": 1})
    assert response.status_code == 401


@pytest.mark.parametrize("role", ["viewer", "operator", "admin"])
def test_every_role_may_preview(client: TestClient, tenant: TenantKeys, role: str) -> None:
    response = client.post(
        URL, json={"plan": GRADUATED, "quantity": 1}, headers=tenant.headers(role)
    )
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("quantity", "words"),
    [
        (-1, "non-negative"),
        ("-0.5", "non-negative"),
        ("NaN", "finite"),
        ("Infinity", "finite"),
        ("-inf", "finite"),
        (10**30, "at most"),
        ("0.0000000000000000001", "decimal places"),
    ],
)
def test_bad_quantities_are_typed(
    client: TestClient, tenant: TenantKeys, quantity: Any, words: str
) -> None:
    response = preview(client, tenant, GRADUATED, quantity)
    assert response.status_code == 422
    body = response.json()
    assert body["error"] == "invalid_quantity"
    assert words in body["message"]


def test_overlapping_tiers_are_an_invalid_plan(client: TestClient, tenant: TenantKeys) -> None:
    plan = {
        "currency": "EUR",
        "model": "graduated",
        "tiers": [{"up_to": 100}, {"up_to": 50}, {"up_to": None}],
    }
    response = preview(client, tenant, plan, 1)
    assert response.status_code == 422
    body = response.json()
    assert body["error"] == "invalid_plan"
    assert body["details"] == {"field": "tiers[1].up_to"}
    assert "overlap" in body["message"]


@pytest.mark.parametrize(
    ("tiers", "field"),
    [
        ([{"up_to": 100}, {"up_to": 100}, {"up_to": None}], "tiers[1].up_to"),
        ([{"up_to": 100}, {"up_to": 200}], "tiers[1].up_to"),
        ([{"up_to": None}, {"up_to": 200}], "tiers[0].up_to"),
        ([{"up_to": None, "unit_price": "-1"}], "tiers[0].unit_price"),
    ],
)
def test_bad_tiers_are_invalid_plans(
    client: TestClient, tenant: TenantKeys, tiers: list[dict[str, Any]], field: str
) -> None:
    plan = {"currency": "EUR", "model": "volume", "tiers": tiers}
    body = preview(client, tenant, plan, 1).json()
    assert (body["error"], body["details"]) == ("invalid_plan", {"field": field})


def test_unknown_currency_and_wrong_exponent(client: TestClient, tenant: TenantKeys) -> None:
    plan: dict[str, Any] = {"currency": "XYZ", "model": "flat", "amount": "1"}
    assert preview(client, tenant, plan, 1).json()["error"] == "invalid_plan"
    plan = {"currency": "JPY", "exponent": 2, "model": "flat", "amount": "1"}
    body = preview(client, tenant, plan, 1).json()
    assert (body["error"], body["details"]) == ("invalid_plan", {"field": "exponent"})


@pytest.mark.parametrize(
    "plan",
    [
        {"currency": "EUR", "model": "per_unit", "unit_price": 0.0015},
        {"currency": "EUR", "model": "per_unit", "unit_price": 15},
        {"currency": "EUR", "model": "graduated", "tiers": [{"up_to": None, "flat_fee": 1.5}]},
        {"currency": "EUR", "model": "graduated", "tiers": [{"up_to": 1.5}, {"up_to": None}]},
        {"currency": "EUR", "model": "banded", "tiers": []},
        {"currency": "EUR", "model": "graduated", "tiers": []},
        {"model": "flat", "amount": "1"},
    ],
)
def test_malformed_plans_are_422(client: TestClient, tenant: TenantKeys, plan: Any) -> None:
    response = preview(client, tenant, plan, 1)
    assert response.status_code == 422
    assert response.json()["error"] == "validation_failed"


def test_json_floats_for_money_are_refused_by_type(client: TestClient, tenant: TenantKeys) -> None:
    plan = {"currency": "EUR", "model": "per_unit", "unit_price": 0.1}
    body = preview(client, tenant, plan, 1).json()
    assert body["details"][0]["type"] == "float_money"
    assert "floats are refused" in body["message"]


def test_json_float_and_nan_quantities_are_refused(client: TestClient, tenant: TenantKeys) -> None:
    body = preview(client, tenant, GRADUATED, 2.5).json()
    assert body["details"][0]["type"] == "float_quantity"
    raw = f'{{"plan": {json.dumps(GRADUATED)}, "quantity": NaN}}'
    response = client.post(
        URL,
        content=raw,
        headers={**tenant.headers("viewer"), "Content-Type": "application/json"},
    )
    assert response.status_code == 422


def test_missing_quantity(client: TestClient, tenant: TenantKeys) -> None:
    response = client.post(URL, json={"plan": GRADUATED}, headers=tenant.headers("viewer"))
    assert response.status_code == 422
