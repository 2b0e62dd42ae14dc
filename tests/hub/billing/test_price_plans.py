"""``/products/{id}/price-plans``: CRUD, typed errors, roles, tenant isolation, audit."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from hub.audit.models import AuditEvent
from tests.hub.billing.conftest import API, Biller

PER_UNIT = {"currency": "EUR", "model": "per_unit", "unit_price": "0.0015"}


def path(biller: Biller, suffix: str = "") -> str:
    return f"/products/{biller.product_id}/price-plans{suffix}"


def create(biller: Biller, body: dict[str, Any], role: str = "operator") -> Any:
    return biller.post(path(biller), body, role=role)


def test_create_read_update_delete(biller: Biller) -> None:
    made = biller.ok(
        create(biller, {"meter": "api.calls", "plan": PER_UNIT, "description": "calls"}), 201
    )
    assert (made["meter"], made["aggregation"], made["currency"]) == ("api.calls", "sum", "EUR")
    assert made["plan"]["unit_price"] == "0.0015"
    assert made["active_from"].startswith("2030-01-01T12:00:00")  # default: now
    fee = biller.ok(
        create(biller, {"plan": {"currency": "EUR", "model": "flat", "amount": "49"}}), 201
    )
    assert fee["meter"] is None
    listed = biller.ok(biller.get(path(biller)))
    assert [p["id"] for p in listed["items"]] == [fee["id"], made["id"]]
    assert biller.ok(biller.get(path(biller, f"/{made['id']}")))["description"] == "calls"
    changed = biller.client.patch(
        f"{API}{path(biller, '/' + made['id'])}",
        json={"plan": {"currency": "JPY", "model": "per_unit", "unit_price": "2"}},
        headers=biller.headers("operator"),
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["currency"] == "JPY"
    gone = biller.client.delete(
        f"{API}{path(biller, '/' + made['id'])}", headers=biller.headers("operator")
    )
    assert gone.status_code == 204
    assert biller.get(path(biller, f"/{made['id']}")).status_code == 404
    with biller.factory() as s:
        actions = s.scalars(
            select(AuditEvent.action)
            .where(AuditEvent.tenant_id == biller.tenant_id, AuditEvent.target_type == "price_plan")
            .order_by(AuditEvent.id)
        ).all()
    assert actions == [
        "price_plan.create",
        "price_plan.create",
        "price_plan.update",
        "price_plan.delete",
    ]


@pytest.mark.parametrize(
    ("tiers", "field"),
    [
        ([{"up_to": 100}, {"up_to": 50}, {"up_to": None}], "plan.tiers[1].up_to"),
        ([{"up_to": 100}, {"up_to": 100}, {"up_to": None}], "plan.tiers[1].up_to"),
        ([{"up_to": 100}, {"up_to": 200}], "plan.tiers[1].up_to"),
        ([{"up_to": None}, {"up_to": 200}], "plan.tiers[0].up_to"),
    ],
)
def test_overlapping_or_unordered_tiers_are_typed_errors(
    biller: Biller, tiers: list[dict[str, Any]], field: str
) -> None:
    plan = {"currency": "EUR", "model": "graduated", "tiers": tiers}
    response = create(biller, {"meter": "api.calls", "plan": plan})
    assert response.status_code == 422
    body = response.json()
    assert body["error"] == "invalid_plan"
    assert body["details"]["field"] == field.removeprefix("plan.")
    assert biller.ok(biller.get(path(biller)))["total"] == 0


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({"meter": "nope", "plan": PER_UNIT}, "validation_failed"),  # not a feature
        ({"meter": "vpn", "plan": PER_UNIT}, "validation_failed"),  # not metered
        ({"plan": PER_UNIT, "aggregation": "max"}, "validation_failed"),  # fee + aggregation
        ({"meter": "api.calls", "plan": {**PER_UNIT, "unit_price": 0.5}}, "validation_failed"),
        ({"meter": "api.calls", "plan": {**PER_UNIT, "currency": "XAU"}}, "invalid_plan"),
        ({"meter": "api.calls", "plan": PER_UNIT, "active_from": "2030-01-01T00:00:00"}, None),
        ({"meter": "api.calls", "plan": PER_UNIT, "extra": 1}, "validation_failed"),
    ],
)
def test_bad_input_is_refused(biller: Biller, body: dict[str, Any], error: str | None) -> None:
    response = create(biller, body)
    assert response.status_code == 422, response.text
    if error is not None:
        assert response.json()["error"] == error


def test_same_charge_same_start_conflicts(biller: Biller) -> None:
    body = {"meter": "api.calls", "plan": PER_UNIT, "active_from": "2030-02-01T00:00:00Z"}
    biller.ok(create(biller, body), 201)
    assert create(biller, body).status_code == 409
    other = {**body, "active_from": "2030-03-01T00:00:00Z"}
    biller.ok(create(biller, other), 201)


def test_roles_and_tenant_isolation(biller: Biller, other_biller: Biller) -> None:
    assert (
        create(biller, {"meter": "api.calls", "plan": PER_UNIT}, role="viewer").status_code == 403
    )
    made = biller.ok(create(biller, {"meter": "api.calls", "plan": PER_UNIT}), 201)
    foreign = f"/products/{biller.product_id}/price-plans"
    assert other_biller.get(foreign).status_code == 404
    assert other_biller.get(f"{foreign}/{made['id']}").status_code == 404
    assert other_biller.post(foreign, {"plan": PER_UNIT}, role="operator").status_code == 404
    # Another tenant's plan id under one's own product is just as missing.
    mine = f"/products/{other_biller.product_id}/price-plans/{made['id']}"
    assert other_biller.get(mine).status_code == 404
    response = other_biller.client.delete(f"{API}{mine}", headers=other_biller.headers())
    assert response.status_code == 404
