"""The REST preview, model by model, at every tier edge, zero, one, huge and allowances.

Expected totals are written out by hand (EUR cents), not computed by the code
under test.
"""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.hub.conftest import TenantKeys

HUGE = 10**18
TIERS = [
    {"up_to": 100, "unit_price": "0.10", "flat_fee": "5.00"},
    {"up_to": 1000, "unit_price": "0.05", "flat_fee": "2.00"},
    {"up_to": None, "unit_price": "0.01"},
]
TABLES: list[tuple[dict[str, Any], list[tuple[int | str, int]]]] = [
    (
        {"model": "flat", "amount": "49.00"},
        [(0, 4900), (1, 4900), (HUGE, 4900)],
    ),
    (
        {"model": "per_unit", "unit_price": "0.25"},
        [(0, 0), (1, 25), ("2.5", 63), (HUGE, 25 * HUGE)],
    ),
    (
        {"model": "graduated", "tiers": TIERS},
        [
            (0, 0), (1, 510), (100, 1500), (101, 1705), (1000, 6200), (1001, 6201),
            (HUGE, 6200 + HUGE - 1000),
        ],
    ),
    (
        {"model": "volume", "tiers": TIERS},
        [(0, 0), (1, 510), (100, 1500), (101, 705), (1000, 5200), (1001, 1001), (HUGE, HUGE)],
    ),
    (
        {"model": "package", "package_size": 100, "package_price": "2.50"},
        [(0, 0), (1, 250), (100, 250), (101, 500), (HUGE, 250 * 10**16)],
    ),
    (
        {"model": "allowance", "included": 1000,
         "overage": {"model": "per_unit", "unit_price": "0.01"}},
        [(0, 0), (1, 0), (1000, 0), (1001, 1), (1500, 500), (HUGE, HUGE - 1000)],
    ),
    (
        {"model": "allowance", "included": 100, "overage": {"model": "volume", "tiers": [
            {"up_to": 10, "unit_price": "1.00"}, {"up_to": None, "unit_price": "0.50"}]}},
        [(0, 0), (100, 0), (101, 100), (110, 1000), (111, 550)],
    ),
    (
        {"model": "allowance", "included": 10, "overage": {"model": "graduated", "tiers": [
            {"up_to": 5, "flat_fee": "3.00"}, {"up_to": None, "unit_price": "0.10",
                                              "flat_fee": "1.00"}]}},
        [(0, 0), (10, 0), (11, 300), (15, 300), (16, 410), (HUGE, 400 + (HUGE - 15) * 10)],
    ),
    (
        {"model": "allowance", "included": 50,
         "overage": {"model": "package", "package_size": 25, "package_price": "4.00"}},
        [(0, 0), (50, 0), (51, 400), (75, 400), (76, 800)],
    ),
]  # fmt: skip


@pytest.mark.parametrize(
    ("plan", "rows"), TABLES, ids=[f"{p['model']}-{i}" for i, (p, _) in enumerate(TABLES)]
)
def test_preview_table(
    client: TestClient, tenant: TenantKeys, plan: dict[str, Any], rows: list[tuple[Any, int]]
) -> None:
    got = []
    for quantity, _ in rows:
        response = client.post(
            "/api/v1/billing/preview",
            json={"plan": {"currency": "EUR", **plan}, "quantity": quantity},
            headers=tenant.headers("viewer"),
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert sum(line["amount"] for line in body["lines"]) == body["total"]
        if plan["model"] == "allowance" and quantity:
            assert body["lines"][0]["kind"] == "included"
        got.append((quantity, body["total"]))
    assert got == rows
