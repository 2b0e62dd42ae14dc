"""Property tests: monotonic graduated totals, independent slice sums, volume drops."""

from __future__ import annotations

import math
from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction

from hypothesis import given, settings
from hypothesis import strategies as st

from hub.billing.pricing import (
    Allowance,
    Currency,
    Graduated,
    Package,
    PerUnit,
    Plan,
    Tier,
    Volume,
    price,
)

D = Decimal
CURRENCIES = st.sampled_from([Currency.of("EUR"), Currency.of("JPY"), Currency.of("KWD")])
PRICES = st.decimals(min_value=0, max_value=1000, places=4)
QUANTITIES = st.one_of(
    st.integers(min_value=0, max_value=10**18).map(D),
    st.decimals(min_value=0, max_value=10**6, places=3),
)


@st.composite
def tier_lists(draw: st.DrawFn) -> tuple[Tier, ...]:
    bounds = draw(
        st.lists(st.integers(min_value=1, max_value=10**6), min_size=0, max_size=6, unique=True)
    )
    up_tos: list[Decimal | None] = [D(b) for b in sorted(bounds)]
    up_tos.append(None)
    return tuple(Tier(up_to, draw(PRICES), draw(PRICES)) for up_to in up_tos)


def minor(exact: Decimal, currency: Currency) -> int:
    return int(exact.scaleb(currency.exponent).to_integral_value(rounding=ROUND_HALF_UP))


def independent_graduated(tiers: tuple[Tier, ...], q: Decimal, currency: Currency) -> int:
    """Sum over slices, each slice computed from its own bounds."""
    lowers = [D(0)] + [t.up_to for t in tiers[:-1] if t.up_to is not None]
    result = 0
    for lower, tier in zip(lowers, tiers, strict=True):
        top = q if tier.up_to is None else min(q, tier.up_to)
        units = max(D(0), top - lower)
        if units > 0:
            result += minor(units * tier.unit_price + tier.flat_fee, currency)
    return result


@settings(max_examples=300)
@given(tier_lists(), QUANTITIES, QUANTITIES, CURRENCIES)
def test_graduated_total_is_monotonic(
    tiers: tuple[Tier, ...], a: Decimal, b: Decimal, currency: Currency
) -> None:
    low, high = sorted((a, b))
    plan = Plan(currency, Graduated(tiers))
    assert price(plan, low).total <= price(plan, high).total


@settings(max_examples=300)
@given(tier_lists(), QUANTITIES, CURRENCIES)
def test_graduated_equals_the_sum_over_slices(
    tiers: tuple[Tier, ...], q: Decimal, currency: Currency
) -> None:
    charge = price(Plan(currency, Graduated(tiers)), q)
    assert charge.total == independent_graduated(tiers, q, currency)
    assert sum(line.units for line in charge.lines) == q
    assert charge.total == sum(line.amount for line in charge.lines)


@settings(max_examples=300)
@given(tier_lists(), QUANTITIES, CURRENCIES)
def test_volume_prices_every_unit_at_the_reached_tier(
    tiers: tuple[Tier, ...], q: Decimal, currency: Currency
) -> None:
    charge = price(Plan(currency, Volume(tiers)), q)
    if q == 0:
        assert charge.total == 0
        return
    reached = next(t for t in tiers if t.up_to is None or q <= t.up_to)
    assert charge.total == minor(q * reached.unit_price + reached.flat_fee, currency)


@given(tier_lists(), QUANTITIES, QUANTITIES)
def test_volume_is_monotonic_within_one_tier(
    tiers: tuple[Tier, ...], a: Decimal, b: Decimal
) -> None:
    low, high = sorted((a, b))
    plan = Plan(Currency.of("EUR"), Volume(tiers))
    cheap, dear = price(plan, low), price(plan, high)
    if low > 0 and cheap.lines[0].tier == dear.lines[0].tier:
        assert cheap.total <= dear.total


def test_volume_total_may_drop_at_a_tier_edge() -> None:
    """Expected for volume pricing: crossing into a cheaper tier reprices every unit."""
    plan = Plan(Currency.of("EUR"), Volume((Tier(D(100), D(1)), Tier(None, D("0.5")))))
    assert price(plan, 100).total == 10000
    assert price(plan, 101).total == 5050


@given(
    st.integers(min_value=0, max_value=10**9).map(D),
    tier_lists(),
    QUANTITIES,
    CURRENCIES,
)
def test_allowance_prices_only_the_units_beyond_it(
    included: Decimal, tiers: tuple[Tier, ...], q: Decimal, currency: Currency
) -> None:
    overage = Graduated(tiers)
    charge = price(Plan(currency, Allowance(included, overage)), q)
    alone = price(Plan(currency, overage), max(D(0), q - included))
    assert charge.total == alone.total


@given(
    st.integers(min_value=1, max_value=10**6).map(D),
    PRICES,
    QUANTITIES,
    CURRENCIES,
)
def test_package_charges_started_packages(
    size: Decimal, package_price: Decimal, q: Decimal, currency: Currency
) -> None:
    packages = math.ceil(Fraction(q) / Fraction(size))
    expected = minor(D(packages) * package_price, currency)
    assert price(Plan(currency, Package(size, package_price)), q).total == expected


@given(st.integers(min_value=0, max_value=10**24), st.integers(min_value=0, max_value=10**6))
def test_per_unit_is_exact_for_huge_integers(q: int, cents: int) -> None:
    plan = Plan(Currency.of("EUR"), PerUnit(D(cents).scaleb(-2)))
    assert price(plan, q).total == q * cents
