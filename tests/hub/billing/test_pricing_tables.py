"""Pricing tables for every model: tier edges, zero, one, huge, fractional, rounding."""

from __future__ import annotations

from decimal import Decimal

from hub.billing.pricing import (
    Allowance,
    Currency,
    FlatFee,
    Graduated,
    Package,
    PerUnit,
    Plan,
    Pricing,
    Tier,
    Volume,
    price,
)

D = Decimal
EUR = Currency.of("EUR")
JPY = Currency.of("JPY")
KWD = Currency.of("KWD")
HUGE = 10**18

# up_to 100 @ 0.10 + 5.00 flat, up_to 1000 @ 0.05 + 2.00 flat, then 0.01
TIERS = (
    Tier(D(100), D("0.10"), D("5.00")),
    Tier(D(1000), D("0.05"), D("2.00")),
    Tier(None, D("0.01")),
)
FLAT_ONLY_TIERS = (
    Tier(D(10), flat_fee=D(10)),
    Tier(D(20), flat_fee=D(20)),
    Tier(None, flat_fee=D(30)),
)


def total(pricing: Pricing, quantity: int | str, currency: Currency = EUR) -> int:
    amount = D(quantity) if isinstance(quantity, str) else quantity
    return price(Plan(currency, pricing), amount).total


def check(pricing: Pricing, table: list[tuple[int | str, int]], currency: Currency = EUR) -> None:
    got = [(q, total(pricing, q, currency)) for q, _ in table]
    assert got == table


def test_flat_fee_is_charged_whatever_the_quantity() -> None:
    check(FlatFee(D("49.00")), [(0, 4900), (1, 4900), (HUGE, 4900), ("2.5", 4900)])


def test_per_unit_edges_and_huge() -> None:
    check(
        PerUnit(D("0.25")),
        [(0, 0), (1, 25), (2, 50), ("2.5", 63), (HUGE, 25 * HUGE), (10**24, 25 * 10**24)],
    )


def test_per_unit_sub_minor_price_rounds_once_per_line() -> None:
    # 0.0015 EUR per call: 0.15 cent each; rounding per unit would bill nothing.
    check(
        PerUnit(D("0.0015")),
        [(0, 0), (1, 0), (3, 0), (4, 1), (333, 50), (1000, 150), (HUGE, 15 * 10**16)],
    )


def test_rounding_is_half_up_not_bankers() -> None:
    # 0.005 EUR = half a cent: 0.5 -> 1, 1.5 -> 2, 2.5 -> 3 (banker's would give 0, 2, 2)
    check(PerUnit(D("0.005")), [(1, 1), (3, 2), (5, 3), (2, 1)])


def test_fractional_quantities() -> None:
    check(PerUnit(D("0.10")), [("2.5", 25), ("0.04", 0), ("0.05", 1), ("0.000000000000000001", 0)])


def test_graduated_table() -> None:
    check(
        Graduated(TIERS),
        [
            (0, 0),
            (1, 510),  # 0.10 + 5.00 flat
            (99, 1490),
            (100, 1500),  # up_to is inclusive: still tier 1
            (101, 1705),  # + tier 2 entered: 0.05 + 2.00 flat
            (1000, 6200),  # 1500 + 900 * 5 + 200
            (1001, 6201),  # + tier 3: one unit at 0.01
            ("100.5", 1703),  # half a unit in tier 2: 2.025 EUR -> 203
            (HUGE, 6200 + HUGE - 1000),
        ],
    )


def test_graduated_breakdown_lines() -> None:
    charge = price(Plan(EUR, Graduated(TIERS)), 1001)
    rows = [
        (ln.kind, ln.tier, ln.units, ln.unit_price, ln.flat_fee, ln.amount) for ln in charge.lines
    ]
    assert rows == [
        ("tier", 0, D(100), D("0.10"), D("5.00"), 1500),
        ("tier", 1, D(900), D("0.05"), D("2.00"), 4700),
        ("tier", 2, D(1), D("0.01"), D(0), 1),
    ]
    assert charge.total == sum(line.amount for line in charge.lines) == 6201
    assert charge.total_decimal == "62.01"
    assert price(Plan(EUR, Graduated(TIERS)), 0).lines == ()


def test_graduated_flat_fee_per_entered_tier() -> None:
    check(
        Graduated(FLAT_ONLY_TIERS),
        [(0, 0), (1, 1000), (10, 1000), (11, 3000), (20, 3000), (21, 6000), (HUGE, 6000)],
    )


def test_volume_table() -> None:
    check(
        Volume(TIERS),
        [
            (0, 0),
            (1, 510),
            (100, 1500),
            (101, 705),  # all 101 units at 0.05 + 2.00: less than at 100, as volume intends
            (1000, 5200),
            (1001, 1001),
            ("0.5", 505),
            (HUGE, HUGE),
        ],
    )


def test_volume_breakdown_is_one_line_at_the_reached_tier() -> None:
    charge = price(Plan(EUR, Volume(TIERS)), 101)
    [line] = charge.lines
    assert (line.tier, line.units, line.unit_price, line.flat_fee) == (1, D(101), D("0.05"), D(2))
    assert line.exact == D("7.05")


def test_volume_flat_fee_of_the_reached_tier_only() -> None:
    check(
        Volume(FLAT_ONLY_TIERS),
        [(0, 0), (1, 1000), (10, 1000), (11, 2000), (20, 2000), (21, 3000), (HUGE, 3000)],
    )


def test_package_rounds_partial_packages_up() -> None:
    check(
        Package(D(100), D("2.50")),
        [
            (0, 0),
            (1, 250),
            (99, 250),
            (100, 250),
            (101, 500),
            (200, 500),
            ("100.001", 500),
            ("0.5", 250),
            (HUGE, 250 * 10**16),
        ],
    )
    [line] = price(Plan(EUR, Package(D(100), D("2.50"))), 101).lines
    assert (line.kind, line.units, line.unit_price) == ("package", D(2), D("2.50"))


def test_fractional_package_size() -> None:
    check(Package(D("0.5"), D(1)), [("0.5", 100), ("0.6", 200), (1, 200)])


def test_allowance_with_per_unit_overage() -> None:
    check(
        Allowance(D(1000), PerUnit(D("0.002"))),
        [
            (0, 0),
            (1, 0),
            (999, 0),
            (1000, 0),
            (1001, 0),  # 0.2 cent
            (1003, 1),  # 0.6 cent
            (2000, 200),
            (HUGE, (HUGE - 1000) // 5),
        ],
    )


def test_allowance_lines() -> None:
    charge = price(Plan(EUR, Allowance(D(1000), PerUnit(D("0.01")))), 1500)
    rows = [(ln.kind, ln.units, ln.amount) for ln in charge.lines]
    assert rows == [("included", D(1000), 0), ("unit", D(500), 500)]
    small = price(Plan(EUR, Allowance(D(1000), PerUnit(D("0.01")))), 7)
    assert [(ln.kind, ln.units) for ln in small.lines] == [("included", D(7)), ("unit", D(0))]


def test_allowance_with_graduated_overage_counts_overage_units() -> None:
    overage = Graduated((Tier(D(500), D("0.01")), Tier(None, D("0.005"), D("1.00"))))
    check(
        Allowance(D(1000), overage),
        [(0, 0), (1000, 0), (1001, 1), (1500, 500), (1501, 601), (2500, 500 + 100 + 500)],
    )


def test_allowance_with_volume_overage() -> None:
    overage = Volume((Tier(D(10), D("1.00")), Tier(None, D("0.50"))))
    check(Allowance(D(10), overage), [(10, 0), (11, 100), (20, 1000), (21, 550)])


def test_allowance_with_package_overage() -> None:
    check(
        Allowance(D(100), Package(D(50), D(5))),
        [(0, 0), (100, 0), (101, 500), (150, 500), (151, 1000)],
    )


def test_zero_allowance_is_the_overage_alone() -> None:
    for q in (0, 1, 100, 101, 1001, HUGE):
        assert total(Allowance(D(0), Graduated(TIERS)), q) == total(Graduated(TIERS), q)


def test_fractional_allowance() -> None:
    check(Allowance(D("0.5"), PerUnit(D(1))), [("0.5", 0), ("0.75", 25), (1, 50)])


def test_zero_decimal_currency() -> None:
    check(PerUnit(D("0.5")), [(1, 1), (2, 1), (3, 2)], JPY)
    graduated = Graduated((Tier(D(10), D(100)), Tier(None, D(80))))
    check(graduated, [(10, 1000), (11, 1080), (HUGE, 1000 + 80 * (HUGE - 10))], JPY)
    charge = price(Plan(JPY, graduated), 11)
    assert charge.total_decimal == "1080"


def test_three_decimal_currency() -> None:
    check(PerUnit(D("0.0005")), [(1, 1), (2, 1), (3, 2), (2468, 1234)], KWD)
    charge = price(Plan(KWD, PerUnit(D("0.0005"))), 2468)
    assert charge.total_decimal == "1.234"
    check(Volume((Tier(D(5), D("1.250")), Tier(None, D("1.000")))), [(5, 6250), (6, 6000)], KWD)


def test_huge_quantities_are_exact() -> None:
    q = 10**24
    assert total(PerUnit(D("0.000000000001")), q) == 10**14  # 1e-12 EUR x 1e24 = 1e12 EUR
    assert total(PerUnit(D("999999999999999")), q) == 999999999999999 * q * 100
    assert total(Graduated(TIERS), HUGE + 1) - total(Graduated(TIERS), HUGE) == 1
