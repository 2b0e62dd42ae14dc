"""Bad plans and bad quantities: typed errors naming the problem."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from hub.billing.plans import parse_plan
from hub.billing.pricing import (
    Currency,
    FlatFee,
    Graduated,
    InvalidPlan,
    InvalidQuantity,
    Package,
    PerUnit,
    Plan,
    Tier,
    Volume,
    format_minor,
    price,
)
from hub.errors import ValidationFailed

D = Decimal
EUR = Currency.of("EUR")


def tiered(model: str, *tiers: dict[str, Any]) -> dict[str, Any]:
    return {"currency": "EUR", "model": model, "tiers": list(tiers)}


def invalid(data: Any) -> InvalidPlan:
    with pytest.raises(InvalidPlan) as caught:
        parse_plan(data)
    assert isinstance(caught.value, ValidationFailed)
    assert caught.value.http_status == 422
    return caught.value


@pytest.mark.parametrize("model", ["graduated", "volume"])
@pytest.mark.parametrize(
    ("tiers", "field", "words"),
    [
        ([{"up_to": 100}, {"up_to": 50}, {"up_to": None}], "tiers[1].up_to", "overlap"),
        ([{"up_to": 100}, {"up_to": 100}, {"up_to": None}], "tiers[1].up_to", "duplicate"),
        (
            [{"up_to": 10}, {"up_to": 30}, {"up_to": 20}, {"up_to": "inf"}],
            "tiers[2].up_to",
            "order",
        ),
        ([{"up_to": 100}], "tiers[0].up_to", "last tier must be unbounded"),
        ([{"up_to": 10}, {"up_to": 20}], "tiers[1].up_to", "last tier must be unbounded"),
        ([{"up_to": None}, {"up_to": 10}], "tiers[0].up_to", "only the last tier"),
        ([{"up_to": None}, {"up_to": None}], "tiers[0].up_to", "only the last tier"),
        ([{"up_to": 0}, {"up_to": None}], "tiers[0].up_to", "positive"),
        ([{"up_to": -5}, {"up_to": None}], "tiers[0].up_to", "positive"),
        ([{"up_to": "NaN"}, {"up_to": None}], "tiers[0].up_to", "finite"),
        ([{"up_to": "-inf"}, {"up_to": None}], "tiers[0].up_to", "finite"),
        ([{"up_to": 10**25}, {"up_to": None}], "tiers[0].up_to", "at most"),
        ([{"up_to": None, "unit_price": "-0.01"}], "tiers[0].unit_price", "negative"),
        ([{"up_to": None, "flat_fee": "-1"}], "tiers[0].flat_fee", "negative"),
        ([{"up_to": None, "unit_price": "NaN"}], "tiers[0].unit_price", "finite"),
        ([{"up_to": None, "unit_price": "Infinity"}], "tiers[0].unit_price", "finite"),
        ([{"up_to": None, "unit_price": "1e16"}], "tiers[0].unit_price", "at most"),
        ([{"up_to": None, "unit_price": "0.0000000000001"}], "tiers[0].unit_price", "places"),
    ],
)
def test_bad_tiers(model: str, tiers: list[dict[str, Any]], field: str, words: str) -> None:
    error = invalid(tiered(model, *tiers))
    assert error.field == field
    assert words in str(error)
    assert error.details == {"field": field}


def test_empty_tiers() -> None:
    assert invalid(tiered("graduated")).field == "graduated.tiers"
    with pytest.raises(InvalidPlan, match="at least one tier"):
        Graduated(())


def test_too_many_tiers() -> None:
    tiers = [{"up_to": n} for n in range(1, 101)] + [{"up_to": None}]
    assert "tiers" in invalid(tiered("volume", *tiers)).field


@pytest.mark.parametrize(
    ("plan", "field"),
    [
        ({"currency": "EUR", "model": "per_unit", "unit_price": 0.1}, "per_unit.unit_price"),
        ({"currency": "EUR", "model": "per_unit", "unit_price": 1}, "per_unit.unit_price"),
        ({"currency": "EUR", "model": "flat", "amount": 10.0}, "flat.amount"),
        ({"currency": "EUR", "model": "flat", "amount": "1,5"}, "flat.amount"),
        ({"currency": "EUR", "model": "flat", "amount": " 1"}, "flat.amount"),
        ({"currency": "EUR", "model": "flat", "amount": "1_000"}, "flat.amount"),
        ({"currency": "EUR", "model": "per_unit", "unit_price": "-0.5"}, "unit_price"),
        ({"currency": "EUR", "model": "flat", "amount": "-1"}, "amount"),
        (
            {"currency": "EUR", "model": "package", "package_size": 0, "package_price": "1"},
            "package_size",
        ),
        (
            {"currency": "EUR", "model": "package", "package_size": 1.5, "package_price": "1"},
            "package.package_size",
        ),
        (
            {"currency": "EUR", "model": "package", "package_size": 10, "package_price": "-1"},
            "package_price",
        ),
        (
            {
                "currency": "EUR",
                "model": "allowance",
                "included": -1,
                "overage": {"model": "per_unit", "unit_price": "1"},
            },
            "included",
        ),
        (
            {
                "currency": "EUR",
                "model": "allowance",
                "included": 10,
                "overage": {"model": "flat", "amount": "1"},
            },
            "allowance.overage",
        ),
        (
            {
                "currency": "EUR",
                "model": "allowance",
                "included": 1,
                "overage": {"model": "volume", "tiers": [{"up_to": 5}]},
            },
            "overage.tiers[0].up_to",
        ),
        ({"currency": "EUR", "model": "tiered", "tiers": []}, "model"),
        ({"currency": "EUR", "unit_price": "1"}, "model"),
        ({"currency": "EUR", "model": "per_unit", "unit_price": "1", "extra": 1}, "per_unit.extra"),
        ({"currency": "eur", "model": "per_unit", "unit_price": "1"}, "per_unit.currency"),
        ({"currency": "XYZ", "model": "per_unit", "unit_price": "1"}, "currency"),
        ({"currency": "XAU", "model": "per_unit", "unit_price": "1"}, "currency"),
        ({"currency": "JPY", "exponent": 2, "model": "per_unit", "unit_price": "1"}, "exponent"),
        (
            {"currency": "EUR", "exponent": 2.0, "model": "per_unit", "unit_price": "1"},
            "per_unit.exponent",
        ),
        (
            {"currency": "EUR", "model": "graduated", "tiers": [{"up_to": 1.5}, {"up_to": None}]},
            "graduated.tiers.0.up_to",
        ),
        ("not a plan", ""),
    ],
)
def test_bad_plans(plan: Any, field: str) -> None:
    assert invalid(plan).field == field


def test_floats_are_refused_with_a_message() -> None:
    error = invalid({"currency": "EUR", "model": "per_unit", "unit_price": 0.0015})
    assert "JSON floats are refused" in str(error)
    error = invalid({"currency": "EUR", "model": "per_unit", "unit_price": 15})
    assert "decimal string" in str(error)


def test_domain_refuses_floats_too() -> None:
    with pytest.raises(InvalidPlan, match="float"):
        PerUnit(0.1)  # type: ignore[arg-type]
    with pytest.raises(InvalidPlan, match="float"):
        Volume((Tier(10.0, D(1)), Tier(None)))  # type: ignore[arg-type]
    with pytest.raises(InvalidPlan, match="float"):
        Package(D(1), 2.5)  # type: ignore[arg-type]


def test_currency_exponents() -> None:
    assert Currency.of("EUR") == Currency("EUR", 2)
    assert Currency.of("JPY", 0) == Currency("JPY", 0)
    assert Currency.of("KWD").exponent == 3
    assert Currency.of("CLF").exponent == 4
    parsed = parse_plan({"currency": "KWD", "exponent": 3, "model": "flat", "amount": "1"})
    assert parsed.currency == Currency("KWD", 3)


@pytest.mark.parametrize(
    "quantity",
    [
        D(-1),
        -1,
        D("-0.000001"),
        D("NaN"),
        D("sNaN"),
        D("Infinity"),
        D("-Infinity"),
        D(10) ** 24 + 1,
        10**30,
        D("0.0000000000000000001"),
        1.5,
        True,
        "5",
    ],
)
def test_bad_quantities(quantity: Any) -> None:
    plan = Plan(EUR, PerUnit(D(1)))
    with pytest.raises(InvalidQuantity) as caught:
        price(plan, quantity)
    assert caught.value.code == "invalid_quantity"
    assert caught.value.http_status == 422


def test_edge_quantities_accepted() -> None:
    plan = Plan(EUR, FlatFee(D(1)))
    for q in (0, D("-0"), D(10) ** 24, D("0.000000000000000001"), D("1.000000000000000000000000")):
        assert price(plan, q).total == 100


def test_format_minor() -> None:
    assert format_minor(1234, 2) == "12.34"
    assert format_minor(5, 2) == "0.05"
    assert format_minor(5, 0) == "5"
    assert format_minor(1234, 3) == "1.234"
    assert format_minor(-5, 2) == "-0.05"
    assert format_minor(10**40, 2) == "1" + "0" * 38 + ".00"
