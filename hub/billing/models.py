"""Billing tables: price plans, billing periods, invoices, the event log, webhooks.

Every row carries ``tenant_id`` and every tenant-scoped query filters on it.
Money is integer minor units and quantities are exact decimals, both stored
as text (:mod:`hub.billing.columns`).

- ``price_plans``: a plan (the JSON shape of :mod:`hub.billing.plans`) for one
  product, either for one metered feature (``meter``) or, with ``meter``
  null, the product's recurring fee; in force from ``active_from``.
- ``billing_periods``: an account's consecutive monthly periods, ``open`` ->
  ``closing`` (ended, waiting for late records) -> ``closed`` (invoiced).
- ``invoices`` and ``invoice_lines``: ``draft`` -> ``finalized``; one line
  per charge with its tier breakdown; adjustment lines for usage that
  arrived after an earlier period closed.
- ``billing_events``: the event log and webhook outbox, written in the
  transaction of the change it reports.
- ``webhook_endpoints`` and ``webhook_deliveries``: where events go, and each
  attempt's state (retried with exponential backoff).
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from hub.billing.columns import DecimalText, MinorUnits
from hub.db.base import Base, UTCDateTime

AGGREGATIONS = ("sum", "count", "max", "unique_count", "latest")
PERIOD_STATUSES = ("open", "closing", "closed")
INVOICE_STATUSES = ("draft", "finalized")
LINE_KINDS = ("recurring", "usage", "adjustment")
DELIVERY_STATUSES = ("pending", "delivered", "failed")
# The integer id on SQLite must be INTEGER to alias ROWID (autoincrement).
BigId = BigInteger().with_variant(Integer(), "sqlite")


def _tenant_fk() -> ForeignKey:
    return ForeignKey("tenants.id", ondelete="CASCADE")


def _in(column: str, values: tuple[str, ...]) -> str:
    quoted = ", ".join(f"'{v}'" for v in values)
    return f"{column} IN ({quoted})"


class PricePlan(Base):
    """How one charge of a product is priced, from ``active_from`` on."""

    __tablename__ = "price_plans"
    __table_args__ = (
        CheckConstraint(_in("aggregation", AGGREGATIONS), name="aggregation"),
        Index(None, "tenant_id", "product_id", "meter", "active_from"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(_tenant_fk())
    product_id: Mapped[str] = mapped_column(ForeignKey("products.id", ondelete="CASCADE"))
    meter: Mapped[str | None] = mapped_column(String(64))
    aggregation: Mapped[str] = mapped_column(String(16), default="sum")
    plan: Mapped[dict[str, Any]] = mapped_column(JSON)
    currency: Mapped[str] = mapped_column(String(3))
    description: Mapped[str] = mapped_column(Text, default="")
    active_from: Mapped[datetime] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class BillingPeriod(Base):
    """One billing period of one account: ``[starts_at, ends_at)`` on recorded time."""

    __tablename__ = "billing_periods"
    __table_args__ = (
        UniqueConstraint("account_id", "seq"),
        CheckConstraint(_in("status", PERIOD_STATUSES), name="status"),
        CheckConstraint("ends_at > starts_at", name="span"),
        Index(None, "status", "ends_at"),
        Index(None, "tenant_id", "account_id", "starts_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(_tenant_fk())
    account_id: Mapped[str] = mapped_column(ForeignKey("customer_accounts.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)
    anchor_at: Mapped[datetime] = mapped_column(UTCDateTime())
    starts_at: Mapped[datetime] = mapped_column(UTCDateTime())
    ends_at: Mapped[datetime] = mapped_column(UTCDateTime())
    status: Mapped[str] = mapped_column(String(16), default="open")
    cutoff: Mapped[datetime | None] = mapped_column(UTCDateTime())
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Invoice(Base):
    """An account's invoice for one period in one currency."""

    __tablename__ = "invoices"
    __table_args__ = (
        UniqueConstraint("period_id", "currency"),
        UniqueConstraint("tenant_id", "number"),
        CheckConstraint(_in("status", INVOICE_STATUSES), name="status"),
        Index(None, "tenant_id", "status"),
        Index(None, "tenant_id", "account_id"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(_tenant_fk())
    account_id: Mapped[str] = mapped_column(ForeignKey("customer_accounts.id", ondelete="CASCADE"))
    period_id: Mapped[str] = mapped_column(ForeignKey("billing_periods.id", ondelete="CASCADE"))
    number: Mapped[str | None] = mapped_column(String(32))
    currency: Mapped[str] = mapped_column(String(3))
    exponent: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="draft")
    subtotal: Mapped[int] = mapped_column(MinorUnits())
    adjustments: Mapped[int] = mapped_column(MinorUnits())
    total: Mapped[int] = mapped_column(MinorUnits())
    usage_cutoff: Mapped[datetime] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    finalized_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class InvoiceLine(Base):
    """One charge on an invoice, with the plan that priced it and its breakdown.

    ``period_id`` is the period the charge is *for*: the invoice's own period
    for ``recurring`` and ``usage`` lines, an earlier closed period for an
    ``adjustment``. ``cumulative_quantity`` and ``cumulative_amount`` are
    what has been billed for that period and charge up to and including this
    line; ``breakdown`` prices the cumulative quantity.
    """

    __tablename__ = "invoice_lines"
    __table_args__ = (
        UniqueConstraint("invoice_id", "position"),
        CheckConstraint(_in("kind", LINE_KINDS), name="kind"),
        Index(None, "tenant_id", "period_id", "product_id", "meter"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(_tenant_fk())
    invoice_id: Mapped[str] = mapped_column(ForeignKey("invoices.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))
    period_id: Mapped[str] = mapped_column(ForeignKey("billing_periods.id", ondelete="CASCADE"))
    product_id: Mapped[str] = mapped_column(String(36))
    meter: Mapped[str | None] = mapped_column(String(64))
    plan_id: Mapped[str | None] = mapped_column(String(36))
    plan: Mapped[dict[str, Any]] = mapped_column(JSON)
    aggregation: Mapped[str] = mapped_column(String(16))
    description: Mapped[str] = mapped_column(Text)
    quantity: Mapped[Decimal] = mapped_column(DecimalText())
    amount: Mapped[int] = mapped_column(MinorUnits())
    cumulative_quantity: Mapped[Decimal] = mapped_column(DecimalText())
    cumulative_amount: Mapped[int] = mapped_column(MinorUnits())
    breakdown: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    basis: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class InvoiceSequence(Base):
    """A tenant's last invoice number (numbers are given at finalization)."""

    __tablename__ = "invoice_sequences"

    tenant_id: Mapped[str] = mapped_column(_tenant_fk(), primary_key=True)
    last_number: Mapped[int] = mapped_column(Integer)


class BillingEvent(Base):
    """One entry of the event log (and the webhook outbox)."""

    __tablename__ = "billing_events"
    __table_args__ = (
        UniqueConstraint("tenant_id", "dedup_key"),
        Index(None, "tenant_id", "type", "occurred_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(_tenant_fk())
    type: Mapped[str] = mapped_column(String(64))
    dedup_key: Mapped[str] = mapped_column(String(200))
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime())
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)


class WebhookEndpoint(Base):
    """A tenant's webhook receiver; the secret is stored encrypted, never shown again."""

    __tablename__ = "webhook_endpoints"
    __table_args__ = (Index(None, "tenant_id"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(_tenant_fk())
    url: Mapped[str] = mapped_column(String(2000))
    description: Mapped[str] = mapped_column(Text, default="")
    event_types: Mapped[list[str]] = mapped_column(JSON)
    secret_sealed: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class WebhookDelivery(Base):
    """One event's delivery to one endpoint: attempts, backoff, outcome."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        UniqueConstraint("endpoint_id", "event_id"),
        CheckConstraint(_in("status", DELIVERY_STATUSES), name="status"),
        Index(None, "status", "next_attempt_at"),
        Index(None, "tenant_id", "endpoint_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(_tenant_fk())
    endpoint_id: Mapped[str] = mapped_column(ForeignKey("webhook_endpoints.id", ondelete="CASCADE"))
    event_id: Mapped[int] = mapped_column(ForeignKey("billing_events.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    response_status: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(String(500))
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
