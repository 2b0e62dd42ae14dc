"""Pure pricing: plans, tiers and the charge a quantity costs under them.

No database, no clock, no float. Prices are :class:`~decimal.Decimal` amounts in
the currency's *major* unit (``Decimal("0.0015")`` EUR per call), quantities are
``Decimal`` or ``int``; all arithmetic runs in an exact decimal context that traps
any rounding, so ``10**18`` units price exactly. Each breakdown line is rounded
once, at the end, to an integer number of *minor* units with ``ROUND_HALF_UP``;
the total is the sum of the rounded lines. See ``docs/pricing.md``.

Tier semantics follow Stripe and Lago: ``up_to`` bounds are inclusive, a tier
starts right above the previous tier's ``up_to``, and the last tier is unbounded
(``up_to=None``). Graduated prices charge each slice at its own tier's rate;
volume prices charge every unit at the rate of the tier the total reaches. A
tier's flat fee is charged once when the tier is entered, and a quantity of zero
enters no tier.
"""

from __future__ import annotations

import decimal
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from typing import Literal, TypeAlias

from hub.errors import ValidationFailed

__all__ = [
    "MAX_PRICE",
    "MAX_QUANTITY",
    "MAX_TIERS",
    "PRICE_PLACES",
    "QUANTITY_PLACES",
    "ROUNDING",
    "Allowance",
    "Charge",
    "ChargeLine",
    "Currency",
    "FlatFee",
    "Graduated",
    "InvalidPlan",
    "InvalidQuantity",
    "LineKind",
    "Overage",
    "Package",
    "PerUnit",
    "Plan",
    "Pricing",
    "Tier",
    "Volume",
    "format_minor",
    "parse_quantity",
    "price",
]

MAX_QUANTITY = Decimal(10) ** 24
"""Largest quantity (and tier bound, allowance, package size) accepted."""
QUANTITY_PLACES = 18
"""Most decimal places a quantity may carry."""
MAX_PRICE = Decimal(10) ** 15
"""Largest price (major units) accepted for any unit price or fee."""
PRICE_PLACES = 12
"""Most decimal places (major units) a price may carry; sub-minor prices are fine."""
MAX_TIERS = 100
ROUNDING = ROUND_HALF_UP
"""How each line's exact amount becomes whole minor units (once, at the end)."""

# Inputs are bounded (quantity <= 1e24 with 18 places, price <= 1e15 with 12
# places), so every product and sum fits in far fewer than 200 digits: any
# Inexact signal would be a bug, and is trapped rather than silently rounded.
_EXACT = decimal.Context(
    prec=200,
    rounding=ROUNDING,
    traps=[
        decimal.InvalidOperation,
        decimal.DivisionByZero,
        decimal.Overflow,
        decimal.Inexact,
    ],
)
_ZERO = Decimal(0)


class InvalidPlan(ValidationFailed):
    """A price plan that cannot be priced: bad tiers, prices, currency or shape.

    Attributes:
        field: where the problem is, e.g. ``tiers[2].up_to`` (empty if global).
    """

    code = "invalid_plan"

    def __init__(self, message: str, *, field: str = "") -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.details = {"field": field} if field else None


class InvalidQuantity(ValidationFailed):
    """A quantity that is not a finite, non-negative, bounded decimal."""

    code = "invalid_quantity"


# ---------------------------------------------------------------- currencies

_ISO_4217_TWO = (
    "AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BMD BND BOB BOV BRL BSD "
    "BTN BWP BYN BZD CAD CDF CHE CHF CHW CNY COP COU CRC CUC CUP CVE CZK DKK DOP DZD "
    "EGP ERN ETB EUR FJD FKP GBP GEL GHS GIP GMD GTQ GYD HKD HNL HTG HUF IDR ILS INR "
    "IRR JMD KES KGS KHR KPW KYD KZT LAK LBP LKR LRD LSL MAD MDL MGA MKD MMK MNT MOP "
    "MRU MUR MVR MWK MXN MXV MYR MZN NAD NGN NIO NOK NPR NZD PAB PEN PGK PHP PKR PLN "
    "QAR RON RSD RUB SAR SBD SCR SDG SEK SGD SHP SLE SLL SOS SRD SSP STN SVC SYP SZL "
    "THB TJS TMT TOP TRY TTD TWD TZS UAH USD USN UYU UZS VED VES WST XCD XCG YER ZAR "
    "ZMW ZWG ZWL"
)
_ISO_4217_ZERO = "BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX UYI VND VUV XAF XOF XPF"
_ISO_4217_THREE = "BHD IQD JOD KWD LYD OMR TND"
_ISO_4217_FOUR = "CLF UYW"

ISO_4217_EXPONENTS: dict[str, int] = {
    code: exponent
    for exponent, codes in (
        (2, _ISO_4217_TWO),
        (0, _ISO_4217_ZERO),
        (3, _ISO_4217_THREE),
        (4, _ISO_4217_FOUR),
    )
    for code in codes.split()
}
"""ISO 4217 currency codes and their minor-unit exponents (funds and metals excluded)."""


@dataclass(frozen=True, slots=True)
class Currency:
    """An ISO 4217 currency and its minor-unit exponent (EUR 2, JPY 0, KWD 3)."""

    code: str
    exponent: int

    @classmethod
    def of(cls, code: str, exponent: int | None = None) -> Currency:
        """The currency ``code``, checking ``exponent`` against ISO 4217 when given.

        Raises:
            InvalidPlan: unknown code, or an exponent that is not the currency's.
        """
        known = ISO_4217_EXPONENTS.get(code)
        if known is None:
            raise InvalidPlan(f"unknown ISO 4217 currency {code!r}", field="currency")
        if exponent is not None and exponent != known:
            raise InvalidPlan(
                f"{code} has {known} decimal places (minor-unit exponent), not {exponent}",
                field="exponent",
            )
        return cls(code, known)


def format_minor(amount: int, exponent: int) -> str:
    """Render integer minor units as a major-unit decimal string (1234, 2 -> "12.34")."""
    if exponent == 0:
        return str(amount)
    sign = "-" if amount < 0 else ""
    major, minor = divmod(abs(amount), 10**exponent)
    return f"{sign}{major}.{minor:0{exponent}d}"


# ---------------------------------------------------------------- decimals


def _fraction_digits(value: Decimal) -> int:
    """Significant decimal places of a finite ``value`` (trailing zeros ignored)."""
    _sign, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)
    if exponent >= 0:
        return 0
    places = -exponent
    for digit in reversed(digits):
        if digit != 0 or places == 0:
            break
        places -= 1
    return places


def _decimal(value: object) -> Decimal | None:
    """``value`` as a Decimal when it is an exact number type, else ``None``."""
    if isinstance(value, bool | float):
        return None
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, Decimal):
        return value
    return None


def _quantity_problem(value: object, *, positive: bool = False) -> str | None:
    """Why ``value`` is not an acceptable quantity, or ``None`` if it is."""
    if isinstance(value, float):
        return "floats are not accepted (use an int, a Decimal or a decimal string)"
    number = _decimal(value)
    if number is None:
        return f"must be an int or a Decimal, not {type(value).__name__}"
    return _range_problem(number, positive=positive)


def _range_problem(number: Decimal, *, positive: bool) -> str | None:
    """Why a Decimal is out of the quantity range, or ``None`` if it is in it."""
    if not number.is_finite():
        return f"must be finite, not {number}"
    if number < 0 or (positive and number == 0):
        return f"must be {'positive' if positive else 'non-negative'}, not {number}"
    if number > MAX_QUANTITY:
        return f"must be at most 1e24, not {number}"
    if _fraction_digits(number) > QUANTITY_PLACES:
        return f"must have at most {QUANTITY_PLACES} decimal places"
    return None


def parse_quantity(value: object) -> Decimal:
    """Check a quantity: finite, non-negative, at most 1e24, at most 18 places.

    Args:
        value: an ``int`` or ``Decimal`` (floats and bools are refused).

    Returns:
        The quantity as a Decimal.

    Raises:
        InvalidQuantity: NaN, infinite, negative, too large, too precise, float.
    """
    problem = _quantity_problem(value)
    if problem is not None:
        raise InvalidQuantity(f"quantity {problem}")
    number = _decimal(value)
    assert number is not None
    return number


def _plan_quantity(value: object, where: str, *, positive: bool = False) -> Decimal:
    problem = _quantity_problem(value, positive=positive)
    if problem is not None:
        raise InvalidPlan(problem, field=where)
    number = _decimal(value)
    assert number is not None
    return number


def _check_price(value: object, where: str) -> None:
    """Refuse floats, NaN, infinities, negative, huge or over-precise prices."""
    if isinstance(value, float):
        raise InvalidPlan("floats are not accepted for money", field=where)
    number = _decimal(value)
    if number is None:
        raise InvalidPlan(f"must be a Decimal, not {type(value).__name__}", field=where)
    if not number.is_finite():
        raise InvalidPlan(f"must be finite, not {number}", field=where)
    if number < 0:
        raise InvalidPlan(f"must not be negative, not {number}", field=where)
    if number > MAX_PRICE:
        raise InvalidPlan(f"must be at most 1e15, not {number}", field=where)
    if _fraction_digits(number) > PRICE_PLACES:
        raise InvalidPlan(f"must have at most {PRICE_PLACES} decimal places", field=where)


# ---------------------------------------------------------------- plans


@dataclass(frozen=True, slots=True)
class Tier:
    """One tier: quantities above the previous tier's ``up_to`` up to this one.

    Attributes:
        up_to: inclusive upper bound; ``None`` for the unbounded last tier.
        unit_price: price per unit (major units, may be sub-minor).
        flat_fee: charged once when the tier is entered (major units).
    """

    up_to: Decimal | None
    unit_price: Decimal = _ZERO
    flat_fee: Decimal = _ZERO


def _check_tiers(tiers: tuple[Tier, ...], where: str) -> None:
    """Tiers ascend strictly by ``up_to`` and only the last one is unbounded.

    Raises:
        InvalidPlan: empty, duplicate, overlapping/unordered, or a bounded last tier.
    """
    if not tiers:
        raise InvalidPlan("at least one tier is required", field=where)
    if len(tiers) > MAX_TIERS:
        raise InvalidPlan(f"at most {MAX_TIERS} tiers are allowed", field=where)
    previous: Decimal | None = None
    last = len(tiers) - 1
    for index, tier in enumerate(tiers):
        here = f"{where}[{index}]"
        _check_price(tier.unit_price, f"{here}.unit_price")
        _check_price(tier.flat_fee, f"{here}.flat_fee")
        if tier.up_to is None:
            if index != last:
                raise InvalidPlan(
                    f"only the last tier may be unbounded, but tier {index} of {last + 1} is",
                    field=f"{here}.up_to",
                )
            continue
        bound = _plan_quantity(tier.up_to, f"{here}.up_to", positive=True)
        _check_ascending(previous, bound, index, here)
        previous = bound
    if tiers[last].up_to is not None:
        raise InvalidPlan(
            'the last tier must be unbounded (up_to null or "inf")',
            field=f"{where}[{last}].up_to",
        )


def _check_ascending(previous: Decimal | None, bound: Decimal, index: int, here: str) -> None:
    if previous is None or bound > previous:
        return
    if bound == previous:
        problem = f"duplicate bound: up_to {bound} repeats tier {index - 1}'s up_to"
    else:
        problem = (
            f"tiers overlap or are out of order: up_to {bound} is below "
            f"tier {index - 1}'s up_to {previous}; tiers must ascend strictly"
        )
    raise InvalidPlan(problem, field=f"{here}.up_to")


@dataclass(frozen=True, slots=True)
class FlatFee:
    """A recurring fee, charged whatever the quantity (zero included)."""

    amount: Decimal
    model: Literal["flat"] = field(default="flat", init=False)

    def __post_init__(self) -> None:
        """Validate the fee."""
        _check_price(self.amount, "amount")


@dataclass(frozen=True, slots=True)
class PerUnit:
    """Every unit at one price."""

    unit_price: Decimal
    model: Literal["per_unit"] = field(default="per_unit", init=False)

    def __post_init__(self) -> None:
        """Validate the price."""
        _check_price(self.unit_price, "unit_price")


@dataclass(frozen=True, slots=True)
class Graduated:
    """Each slice of the quantity at its own tier's rate, plus entered tiers' flat fees."""

    tiers: tuple[Tier, ...]
    model: Literal["graduated"] = field(default="graduated", init=False)

    def __post_init__(self) -> None:
        """Validate the tiers (kept as a tuple)."""
        object.__setattr__(self, "tiers", tuple(self.tiers))
        _check_tiers(self.tiers, "tiers")


@dataclass(frozen=True, slots=True)
class Volume:
    """All units at the rate of the tier the total reaches, plus that tier's flat fee."""

    tiers: tuple[Tier, ...]
    model: Literal["volume"] = field(default="volume", init=False)

    def __post_init__(self) -> None:
        """Validate the tiers (kept as a tuple)."""
        object.__setattr__(self, "tiers", tuple(self.tiers))
        _check_tiers(self.tiers, "tiers")


@dataclass(frozen=True, slots=True)
class Package:
    """A price per package of ``size`` units; a started package is a whole package."""

    size: Decimal
    package_price: Decimal
    model: Literal["package"] = field(default="package", init=False)

    def __post_init__(self) -> None:
        """Validate the package size and price."""
        _plan_quantity(self.size, "package_size", positive=True)
        _check_price(self.package_price, "package_price")


Overage: TypeAlias = PerUnit | Graduated | Volume | Package


@dataclass(frozen=True, slots=True)
class Allowance:
    """The first ``included`` units free, the rest priced by ``overage``.

    Overage tiers count overage units (the quantity minus the allowance), not the
    total quantity.
    """

    included: Decimal
    overage: Overage
    model: Literal["allowance"] = field(default="allowance", init=False)

    def __post_init__(self) -> None:
        """Validate the allowance and the overage pricing."""
        _plan_quantity(self.included, "included")
        if not isinstance(self.overage, PerUnit | Graduated | Volume | Package):
            raise InvalidPlan(
                "overage must be per_unit, graduated, volume or package", field="overage"
            )


Pricing: TypeAlias = FlatFee | PerUnit | Graduated | Volume | Package | Allowance


@dataclass(frozen=True, slots=True)
class Plan:
    """A pricing model in one currency."""

    currency: Currency
    pricing: Pricing


# ---------------------------------------------------------------- charges

LineKind = Literal["flat", "unit", "tier", "package", "included"]


@dataclass(frozen=True, slots=True)
class ChargeLine:
    """One line of a charge's breakdown.

    Attributes:
        kind: ``flat`` fee, ``unit`` (per unit), graduated/volume ``tier``,
            ``package`` or ``included`` (free allowance).
        tier: index into the tiers that priced the line (overage tiers for an
            allowance), ``None`` for untiered lines.
        units: units priced on this line; for ``package`` lines, packages.
        unit_price: price per unit (per package), major units.
        flat_fee: fee charged once on this line, major units.
        exact: ``units * unit_price + flat_fee`` before rounding, major units.
        amount: ``exact`` rounded once to whole minor units (``ROUND_HALF_UP``).
        description: a human-readable summary.
    """

    kind: LineKind
    tier: int | None
    units: Decimal
    unit_price: Decimal
    flat_fee: Decimal
    exact: Decimal
    amount: int
    description: str


@dataclass(frozen=True, slots=True)
class Charge:
    """What a quantity costs under a plan.

    Attributes:
        currency: the plan's currency.
        quantity: the quantity priced.
        lines: the breakdown, in tier order.
        total: sum of the lines' rounded amounts, in minor units.
    """

    currency: Currency
    quantity: Decimal
    lines: tuple[ChargeLine, ...]
    total: int

    @property
    def total_decimal(self) -> str:
        """The total in major units, e.g. ``"12.34"``."""
        return format_minor(self.total, self.currency.exponent)


@dataclass(frozen=True, slots=True)
class _Draft:
    kind: LineKind
    tier: int | None
    units: Decimal
    unit_price: Decimal
    flat_fee: Decimal
    description: str


def price(plan: Plan, quantity: Decimal | int) -> Charge:
    """Price ``quantity`` under ``plan``.

    Args:
        plan: a validated plan.
        quantity: finite, non-negative; fractional usage (GB) is fine.

    Returns:
        The charge: each line rounded once to minor units, and their sum.

    Raises:
        InvalidQuantity: the quantity is NaN, infinite, negative, too large,
            has more than 18 decimal places, or is a float.
    """
    amount = parse_quantity(quantity)
    exponent = plan.currency.exponent
    with decimal.localcontext(_EXACT):
        lines = tuple(_finish(draft, exponent) for draft in _drafts(plan.pricing, amount))
    return Charge(plan.currency, amount, lines, sum(line.amount for line in lines))


def _finish(draft: _Draft, exponent: int) -> ChargeLine:
    """Compute a line's exact amount and round it once to minor units."""
    exact = draft.units * draft.unit_price + draft.flat_fee
    minor = exact.scaleb(exponent).to_integral_value(rounding=ROUNDING)
    return ChargeLine(
        kind=draft.kind,
        tier=draft.tier,
        units=draft.units,
        unit_price=draft.unit_price,
        flat_fee=draft.flat_fee,
        exact=exact,
        amount=int(minor),
        description=draft.description,
    )


def _drafts(pricing: Pricing, quantity: Decimal) -> list[_Draft]:
    match pricing:
        case FlatFee(amount=amount):
            return [_Draft("flat", None, quantity, _ZERO, amount, "recurring fee")]
        case PerUnit(unit_price=unit_price):
            return [_Draft("unit", None, quantity, unit_price, _ZERO, "per unit")]
        case Graduated(tiers=tiers):
            return _graduated(tiers, quantity)
        case Volume(tiers=tiers):
            return _volume(tiers, quantity)
        case Package():
            return [_package(pricing, quantity)]
        case Allowance():
            return _allowance(pricing, quantity)
    raise InvalidPlan(f"unknown pricing model {type(pricing).__name__}")  # pragma: no cover


def _bounds(lower: Decimal, up_to: Decimal | None) -> str:
    return f"over {lower} up to {'inf' if up_to is None else up_to}"


def _graduated(tiers: tuple[Tier, ...], quantity: Decimal) -> list[_Draft]:
    """One line per entered tier: the slice of the quantity inside it."""
    drafts: list[_Draft] = []
    lower = _ZERO
    for index, tier in enumerate(tiers):
        if quantity <= lower:
            break
        upper = quantity if tier.up_to is None else min(quantity, tier.up_to)
        description = f"tier {index + 1}: {_bounds(lower, tier.up_to)}"
        drafts.append(
            _Draft("tier", index, upper - lower, tier.unit_price, tier.flat_fee, description)
        )
        if tier.up_to is None:
            break
        lower = tier.up_to
    return drafts


def _volume(tiers: tuple[Tier, ...], quantity: Decimal) -> list[_Draft]:
    """One line: every unit at the tier the quantity reaches (none for zero)."""
    if quantity == 0:
        return []
    lower = _ZERO
    for index, tier in enumerate(tiers):
        if tier.up_to is None or quantity <= tier.up_to:
            description = f"tier {index + 1} ({_bounds(lower, tier.up_to)}): all units"
            return [_Draft("tier", index, quantity, tier.unit_price, tier.flat_fee, description)]
        lower = tier.up_to
    raise InvalidPlan("the last tier must be unbounded", field="tiers")  # pragma: no cover


def _package(package: Package, quantity: Decimal) -> _Draft:
    """Whole packages: a started package counts in full."""
    whole, rest = divmod(quantity, package.size)
    packages = whole + (1 if rest else 0)
    description = f"{quantity} units in {packages} package(s) of {package.size}"
    return _Draft("package", None, packages, package.package_price, _ZERO, description)


def _allowance(allowance: Allowance, quantity: Decimal) -> list[_Draft]:
    """The free allowance, then the overage priced on the units beyond it."""
    free = min(quantity, allowance.included)
    included = _Draft(
        "included", None, free, _ZERO, _ZERO, f"included: first {allowance.included} units"
    )
    return [included, *_drafts(allowance.overage, quantity - free)]
