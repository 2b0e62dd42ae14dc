"""Price plans as the API accepts them, and charges as it returns them.

The JSON shape is checked here (types, required fields, the pricing model);
the rules that make a plan priceable (ascending tiers, an unbounded last tier,
non-negative prices, a known currency) are checked by :mod:`hub.billing.pricing`
when :meth:`PlanIn.to_plan` builds the domain plan, and raise
:class:`~hub.billing.pricing.InvalidPlan`.

Money is a **decimal string in major units** (``"19.99"``, ``"0.0015"``). JSON
numbers are refused for money, integers included, so ``1999`` can never be read
as cents by one side and as euros by the other, and ``0.1`` never passes through
a float. Quantities, tier bounds, allowances and package sizes are JSON integers
or decimal strings; JSON floats are refused for them too.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Literal, TypeAlias, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
)
from pydantic_core import PydanticCustomError

from hub.billing import pricing
from hub.billing.pricing import InvalidPlan

T = TypeVar("T")

_MAX_TEXT = 64
_INFINITE = frozenset({"inf", "infinity", "+inf", "+infinity"})


def _text_to_decimal(text: str, what: str) -> Decimal:
    """Parse a decimal string (plain or scientific; NaN/inf left to the domain)."""
    if len(text) > _MAX_TEXT or text != text.strip() or "_" in text:
        raise PydanticCustomError(
            "decimal_string", "{what} must be a decimal string like '12.5'", {"what": what}
        )
    try:
        return Decimal(text)
    except InvalidOperation:
        raise PydanticCustomError(
            "decimal_string", "{what} must be a decimal string like '12.5'", {"what": what}
        ) from None


def _money(value: Any) -> Decimal:
    """Money: a decimal string in major units (or a Decimal from Python callers)."""
    if isinstance(value, Decimal):
        return value
    if isinstance(value, str):
        return _text_to_decimal(value, "money")
    if isinstance(value, float):
        raise PydanticCustomError(
            "float_money",
            "money must be a decimal string in major units like '0.0015'; JSON floats are refused",
        )
    raise PydanticCustomError(
        "money_not_string",
        "money must be a decimal string in major units like '19.99'; JSON numbers are refused",
    )


def _quantity(value: Any) -> Decimal:
    """A quantity: a JSON integer or a decimal string; floats are refused."""
    if isinstance(value, bool):
        raise PydanticCustomError("quantity_type", "expected an integer or a decimal string")
    if isinstance(value, int | Decimal):
        return Decimal(value)
    if isinstance(value, str):
        return _text_to_decimal(value, "quantity")
    if isinstance(value, float):
        raise PydanticCustomError(
            "float_quantity",
            "quantities must be JSON integers or decimal strings like '2.5'; "
            "JSON floats are refused",
        )
    raise PydanticCustomError("quantity_type", "expected an integer or a decimal string")


def _up_to(value: Any) -> Decimal | None:
    """A tier bound: like a quantity, or ``null``/``"inf"`` for the last tier."""
    if value is None or (isinstance(value, str) and value.lower() in _INFINITE):
        return None
    bound = _quantity(value)
    return None if bound.is_infinite() and bound > 0 else bound


def _decimal_str(value: Decimal) -> str:
    """Plain notation, never an exponent (``1E+3`` -> ``"1000"``); no ``-0``."""
    return "0" if value == 0 else f"{value:f}"


Money = Annotated[
    Decimal,
    PlainValidator(_money),
    PlainSerializer(_decimal_str, return_type=str),
    WithJsonSchema({"type": "string", "examples": ["19.99", "0.0015"]}),
]
Quantity = Annotated[
    Decimal,
    PlainValidator(_quantity),
    PlainSerializer(_decimal_str, return_type=str),
    WithJsonSchema({"anyOf": [{"type": "integer"}, {"type": "string"}], "examples": ["2.5"]}),
]
UpTo = Annotated[
    Decimal | None,
    PlainValidator(_up_to),
    PlainSerializer(lambda v: None if v is None else _decimal_str(v), return_type=str | None),
    WithJsonSchema(
        {
            "anyOf": [{"type": "integer"}, {"type": "string"}, {"type": "null"}],
            "description": 'inclusive upper bound; null or "inf" for the last tier',
        }
    ),
]
CurrencyCode = Annotated[str, Field(pattern=r"^[A-Z]{3}$", examples=["EUR"])]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _within(prefix: str, build: Callable[[], T]) -> T:
    """Run ``build``; prefix the field of any InvalidPlan it raises with ``prefix``."""
    try:
        return build()
    except InvalidPlan as exc:
        field = f"{prefix}.{exc.field}" if exc.field else prefix
        message = str(exc).removeprefix(f"{exc.field}: ") if exc.field else str(exc)
        raise InvalidPlan(message, field=field) from None


# ---------------------------------------------------------------- pricing models


class TierIn(_Strict):
    """One tier: ``up_to`` (inclusive, ``null``/``"inf"`` last), unit price, flat fee."""

    up_to: UpTo
    unit_price: Money = Decimal(0)
    flat_fee: Money = Decimal(0)

    def to_tier(self) -> pricing.Tier:
        """The domain tier."""
        return pricing.Tier(self.up_to, self.unit_price, self.flat_fee)


class _Tiered(_Strict):
    tiers: list[TierIn] = Field(min_length=1, max_length=pricing.MAX_TIERS)

    def _tiers(self) -> tuple[pricing.Tier, ...]:
        return tuple(tier.to_tier() for tier in self.tiers)


class FlatIn(_Strict):
    """A recurring fee, whatever the quantity."""

    model: Literal["flat"]
    amount: Money

    def to_pricing(self) -> pricing.FlatFee:
        """The domain pricing (raises InvalidPlan)."""
        return pricing.FlatFee(self.amount)


class PerUnitIn(_Strict):
    """Every unit at ``unit_price``."""

    model: Literal["per_unit"]
    unit_price: Money

    def to_pricing(self) -> pricing.PerUnit:
        """The domain pricing (raises InvalidPlan)."""
        return pricing.PerUnit(self.unit_price)


class GraduatedIn(_Tiered):
    """Each slice at its own tier's rate."""

    model: Literal["graduated"]

    def to_pricing(self) -> pricing.Graduated:
        """The domain pricing (raises InvalidPlan)."""
        return pricing.Graduated(self._tiers())


class VolumeIn(_Tiered):
    """All units at the rate of the tier the total reaches."""

    model: Literal["volume"]

    def to_pricing(self) -> pricing.Volume:
        """The domain pricing (raises InvalidPlan)."""
        return pricing.Volume(self._tiers())


class PackageIn(_Strict):
    """``package_price`` per started package of ``package_size`` units."""

    model: Literal["package"]
    package_size: Quantity
    package_price: Money

    def to_pricing(self) -> pricing.Package:
        """The domain pricing (raises InvalidPlan)."""
        return pricing.Package(self.package_size, self.package_price)


OverageIn: TypeAlias = Annotated[
    PerUnitIn | GraduatedIn | VolumeIn | PackageIn, Field(discriminator="model")
]


class AllowanceIn(_Strict):
    """The first ``included`` units free; ``overage`` prices the units beyond them."""

    model: Literal["allowance"]
    included: Quantity
    overage: OverageIn

    def to_pricing(self) -> pricing.Allowance:
        """The domain pricing (raises InvalidPlan)."""

        def build() -> pricing.Overage:
            return self.overage.to_pricing()

        overage = _within("overage", build)
        return pricing.Allowance(self.included, overage)


# ---------------------------------------------------------------- plans


class _PlanCurrency(_Strict):
    currency: CurrencyCode
    exponent: int | None = Field(
        default=None, ge=0, le=4, strict=True, description="minor-unit exponent (checked)"
    )

    def to_currency(self) -> pricing.Currency:
        """The domain currency (raises InvalidPlan)."""
        return pricing.Currency.of(self.currency, self.exponent)


class FlatPlan(FlatIn, _PlanCurrency):
    """A flat recurring fee in a currency."""


class PerUnitPlan(PerUnitIn, _PlanCurrency):
    """Per-unit pricing in a currency."""


class GraduatedPlan(GraduatedIn, _PlanCurrency):
    """Graduated tiers in a currency."""


class VolumePlan(VolumeIn, _PlanCurrency):
    """Volume tiers in a currency."""


class PackagePlan(PackageIn, _PlanCurrency):
    """Package pricing in a currency."""


class AllowancePlan(AllowanceIn, _PlanCurrency):
    """Included allowance plus overage in a currency."""


PlanIn: TypeAlias = Annotated[
    FlatPlan | PerUnitPlan | GraduatedPlan | VolumePlan | PackagePlan | AllowancePlan,
    Field(discriminator="model"),
]
"""A price plan as the API accepts it (``model`` selects the pricing model)."""

_PLAN_ADAPTER: TypeAdapter[PlanIn] = TypeAdapter(PlanIn)


def to_plan(plan: PlanIn) -> pricing.Plan:
    """Build the domain plan from its validated JSON shape.

    Raises:
        InvalidPlan: tiers, prices, allowance or currency not acceptable.
    """
    return pricing.Plan(plan.to_currency(), plan.to_pricing())


def parse_plan(data: Any) -> pricing.Plan:
    """Parse and check a plan from decoded JSON (a dict), for Python callers and the CLI.

    Raises:
        InvalidPlan: wrong shape (the first problem is named) or an unpriceable plan.
    """
    try:
        shape = _PLAN_ADAPTER.validate_python(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        if not where and first["type"].startswith("union_tag"):
            where = "model"  # the discriminator is missing or names no model
        raise InvalidPlan(first["msg"], field=where) from None
    return to_plan(shape)


# ---------------------------------------------------------------- preview


class PreviewRequest(_Strict):
    """``POST /billing/preview``: a plan and the quantity to price."""

    plan: PlanIn
    quantity: Quantity


class ChargeLineOut(BaseModel):
    """One breakdown line; amounts are integer minor units, prices decimal strings."""

    kind: pricing.LineKind
    tier: int | None = Field(description="index into the tiers that priced this line")
    description: str
    units: Quantity = Field(description="units on this line (packages for `package`)")
    unit_price: Money
    flat_fee: Money
    exact: Money = Field(description="units * unit_price + flat_fee, before rounding")
    amount: int = Field(description="exact, rounded half-up once, in minor units")
    amount_decimal: str = Field(description="amount in major units")


class ChargeOut(BaseModel):
    """A priced quantity: total in minor units and the breakdown."""

    currency: str
    exponent: int
    quantity: Quantity
    total: int = Field(description="sum of the lines' amounts, in minor units")
    total_decimal: str = Field(description="total in major units, e.g. '12.34'")
    rounding: str = Field(description="rounding applied once per line")
    lines: list[ChargeLineOut]

    @classmethod
    def from_charge(cls, charge: pricing.Charge) -> ChargeOut:
        """Serialize a domain charge."""
        exponent = charge.currency.exponent
        return cls(
            currency=charge.currency.code,
            exponent=exponent,
            quantity=charge.quantity,
            total=charge.total,
            total_decimal=charge.total_decimal,
            rounding="half_up",
            lines=[
                ChargeLineOut(
                    kind=line.kind,
                    tier=line.tier,
                    description=line.description,
                    units=line.units,
                    unit_price=line.unit_price,
                    flat_fee=line.flat_fee,
                    exact=line.exact,
                    amount=line.amount,
                    amount_decimal=pricing.format_minor(line.amount, exponent),
                )
                for line in charge.lines
            ],
        )


def preview(request: PreviewRequest) -> ChargeOut:
    """Price the request's quantity under its plan.

    Raises:
        InvalidPlan: the plan cannot be priced.
        InvalidQuantity: the quantity is negative, NaN, infinite or too large.
    """
    return ChargeOut.from_charge(pricing.price(to_plan(request.plan), request.quantity))
