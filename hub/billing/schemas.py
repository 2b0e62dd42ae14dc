"""Request and response bodies of the billing API (``XCreate/XUpdate/XPublic``).

Amounts are integer minor units with a ``*_decimal`` string in major units
beside them; quantities are decimal strings. Nothing here is a float.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import AnyHttpUrl, AwareDatetime, BaseModel, ConfigDict, Field, PlainSerializer

from hub.billing.columns import decimal_text
from hub.billing.plans import PlanIn

Aggregation = Literal["sum", "count", "max", "unique_count", "latest"]
MeterKey = Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")]
EventType = Literal["invoice.finalized", "usage.threshold_reached", "entitlement.expiring"]
EVENT_TYPES: tuple[str, ...] = (
    "invoice.finalized",
    "usage.threshold_reached",
    "entitlement.expiring",
)
DecimalStr = Annotated[Decimal, PlainSerializer(decimal_text, return_type=str)]


class _Public(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---------------------------------------------------------------- price plans


class PricePlanCreate(_Strict):
    """A plan for one charge of a product.

    ``meter`` names a metered feature of the product (its usage is priced
    with ``aggregation`` per billing period); without it the plan is the
    product's recurring fee, priced on the entitled quantity.
    """

    meter: MeterKey | None = None
    aggregation: Aggregation = "sum"
    plan: PlanIn
    active_from: AwareDatetime | None = Field(
        default=None, description="default: now; the latest plan active before a period ends wins"
    )
    description: str = Field(default="", max_length=2000)


class PricePlanUpdate(_Strict):
    """Changes to a plan no invoice has used yet; omitted fields stay."""

    aggregation: Aggregation | None = None
    plan: PlanIn | None = None
    active_from: AwareDatetime | None = None
    description: str | None = Field(default=None, max_length=2000)


class PricePlanPublic(_Public):
    """A stored price plan."""

    id: str
    product_id: str
    meter: str | None
    aggregation: str
    plan: dict[str, Any]
    currency: str
    description: str
    active_from: datetime
    created_at: datetime
    updated_at: datetime


# ---------------------------------------------------------------- periods, invoices


class PeriodPublic(_Public):
    """A billing period of an account."""

    id: str
    account_id: str
    seq: int
    anchor_at: datetime
    starts_at: datetime
    ends_at: datetime
    status: str
    cutoff: datetime | None
    closed_at: datetime | None


class InvoiceLinePublic(BaseModel):
    """One charge: quantity, amount and the plan's breakdown of the cumulative quantity."""

    position: int
    kind: str
    period_id: str
    period_start: datetime
    period_end: datetime
    product_id: str
    meter: str | None
    plan_id: str | None
    aggregation: str
    description: str
    quantity: DecimalStr
    amount: int
    amount_decimal: str
    cumulative_quantity: DecimalStr
    cumulative_amount: int
    breakdown: list[dict[str, Any]]
    basis: dict[str, Any] | None


class InvoicePublic(BaseModel):
    """An invoice with its lines."""

    id: str
    number: str | None
    account_id: str
    period_id: str
    period_start: datetime
    period_end: datetime
    status: str
    currency: str
    exponent: int
    subtotal: int
    adjustments: int
    total: int
    total_decimal: str
    usage_cutoff: datetime
    created_at: datetime
    finalized_at: datetime | None
    lines: list[InvoiceLinePublic]


# ---------------------------------------------------------------- events, webhooks


class EventPublic(_Public):
    """One entry of the event log."""

    id: int
    type: str
    occurred_at: datetime
    payload: dict[str, Any]


class WebhookCreate(_Strict):
    """A webhook receiver: an http(s) URL and the events it wants."""

    url: AnyHttpUrl
    event_types: list[EventType] = Field(min_length=1, max_length=len(EVENT_TYPES))
    description: str = Field(default="", max_length=2000)


class WebhookPublic(_Public):
    """A webhook endpoint (its secret is never shown again)."""

    id: str
    url: str
    event_types: list[str]
    description: str
    created_at: datetime
    updated_at: datetime


class WebhookCreated(WebhookPublic):
    """The answer to a creation or rotation: the only time the secret is shown."""

    secret: str


class DeliveryPublic(_Public):
    """One event's delivery state to one endpoint."""

    id: int
    endpoint_id: str
    event_id: int
    status: str
    attempts: int
    next_attempt_at: datetime
    last_attempt_at: datetime | None
    response_status: int | None
    last_error: str | None
    delivered_at: datetime | None
