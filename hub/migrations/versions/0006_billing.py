"""Billing: price plans, billing periods, invoices and lines, event log, webhooks.

Revision ID: 0006_billing
Revises: 0004_usage

Money (integer minor units) and quantities (exact decimals) are stored as
canonical decimal text on both backends (see hub.billing.columns).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_billing"
down_revision: str | None = "0004_usage"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_UTC = sa.DateTime(timezone=True)
_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_QTY = sa.String(length=64)
_MONEY = sa.String(length=48)


def _fk(table: str, column: str, target: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        [column],
        [f"{target}.id"],
        name=op.f(f"fk_{table}_{column}_{target}"),
        ondelete="CASCADE",
    )


def _pk(table: str, *columns: str) -> sa.PrimaryKeyConstraint:
    return sa.PrimaryKeyConstraint(*columns, name=op.f(f"pk_{table}"))


def _index(table: str, *columns: str) -> None:
    op.create_index(op.f(f"ix_{table}_{'_'.join(columns)}"), table, list(columns), unique=False)


def _price_plans() -> None:
    op.create_table(
        "price_plans",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.Column("product_id", sa.String(length=36), nullable=False),
        sa.Column("meter", sa.String(length=64), nullable=True),
        sa.Column("aggregation", sa.String(length=16), nullable=False),
        sa.Column("plan", sa.JSON(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("active_from", _UTC, nullable=False),
        sa.Column("created_at", _UTC, nullable=False),
        sa.Column("updated_at", _UTC, nullable=False),
        sa.CheckConstraint(
            "aggregation IN ('sum', 'count', 'max', 'unique_count', 'latest')",
            name=op.f("ck_price_plans_aggregation"),
        ),
        _fk("price_plans", "tenant_id", "tenants"),
        _fk("price_plans", "product_id", "products"),
        _pk("price_plans", "id"),
    )
    _index("price_plans", "tenant_id", "product_id", "meter", "active_from")


def _billing_periods() -> None:
    op.create_table(
        "billing_periods",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.Column("account_id", sa.String(length=36), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("anchor_at", _UTC, nullable=False),
        sa.Column("starts_at", _UTC, nullable=False),
        sa.Column("ends_at", _UTC, nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("cutoff", _UTC, nullable=True),
        sa.Column("closed_at", _UTC, nullable=True),
        sa.Column("created_at", _UTC, nullable=False),
        sa.CheckConstraint(
            "status IN ('open', 'closing', 'closed')", name=op.f("ck_billing_periods_status")
        ),
        sa.CheckConstraint("ends_at > starts_at", name=op.f("ck_billing_periods_span")),
        _fk("billing_periods", "tenant_id", "tenants"),
        _fk("billing_periods", "account_id", "customer_accounts"),
        _pk("billing_periods", "id"),
        sa.UniqueConstraint("account_id", "seq", name=op.f("uq_billing_periods_account_id_seq")),
    )
    _index("billing_periods", "status", "ends_at")
    _index("billing_periods", "tenant_id", "account_id", "starts_at")


def _invoices() -> None:
    op.create_table(
        "invoices",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.Column("account_id", sa.String(length=36), nullable=False),
        sa.Column("period_id", sa.String(length=36), nullable=False),
        sa.Column("number", sa.String(length=32), nullable=True),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("exponent", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("subtotal", _MONEY, nullable=False),
        sa.Column("adjustments", _MONEY, nullable=False),
        sa.Column("total", _MONEY, nullable=False),
        sa.Column("usage_cutoff", _UTC, nullable=False),
        sa.Column("created_at", _UTC, nullable=False),
        sa.Column("finalized_at", _UTC, nullable=True),
        sa.CheckConstraint("status IN ('draft', 'finalized')", name=op.f("ck_invoices_status")),
        _fk("invoices", "tenant_id", "tenants"),
        _fk("invoices", "account_id", "customer_accounts"),
        _fk("invoices", "period_id", "billing_periods"),
        _pk("invoices", "id"),
        sa.UniqueConstraint("period_id", "currency", name=op.f("uq_invoices_period_id_currency")),
        sa.UniqueConstraint("tenant_id", "number", name=op.f("uq_invoices_tenant_id_number")),
    )
    _index("invoices", "tenant_id", "status")
    _index("invoices", "tenant_id", "account_id")


def _invoice_lines() -> None:
    op.create_table(
        "invoice_lines",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.Column("invoice_id", sa.String(length=36), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("period_id", sa.String(length=36), nullable=False),
        sa.Column("product_id", sa.String(length=36), nullable=False),
        sa.Column("meter", sa.String(length=64), nullable=True),
        sa.Column("plan_id", sa.String(length=36), nullable=True),
        sa.Column("plan", sa.JSON(), nullable=False),
        sa.Column("aggregation", sa.String(length=16), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("quantity", _QTY, nullable=False),
        sa.Column("amount", _MONEY, nullable=False),
        sa.Column("cumulative_quantity", _QTY, nullable=False),
        sa.Column("cumulative_amount", _MONEY, nullable=False),
        sa.Column("breakdown", sa.JSON(), nullable=False),
        sa.Column("basis", sa.JSON(), nullable=True),
        sa.CheckConstraint(
            "kind IN ('recurring', 'usage', 'adjustment')", name=op.f("ck_invoice_lines_kind")
        ),
        _fk("invoice_lines", "tenant_id", "tenants"),
        _fk("invoice_lines", "invoice_id", "invoices"),
        _fk("invoice_lines", "period_id", "billing_periods"),
        _pk("invoice_lines", "id"),
        sa.UniqueConstraint(
            "invoice_id", "position", name=op.f("uq_invoice_lines_invoice_id_position")
        ),
    )
    _index("invoice_lines", "tenant_id", "period_id", "product_id", "meter")
    op.create_table(
        "invoice_sequences",
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.Column("last_number", sa.Integer(), nullable=False),
        _fk("invoice_sequences", "tenant_id", "tenants"),
        _pk("invoice_sequences", "tenant_id"),
    )


def _events_and_webhooks() -> None:
    op.create_table(
        "billing_events",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.Column("type", sa.String(length=64), nullable=False),
        sa.Column("dedup_key", sa.String(length=200), nullable=False),
        sa.Column("occurred_at", _UTC, nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        _fk("billing_events", "tenant_id", "tenants"),
        _pk("billing_events", "id"),
        sa.UniqueConstraint(
            "tenant_id", "dedup_key", name=op.f("uq_billing_events_tenant_id_dedup_key")
        ),
    )
    _index("billing_events", "tenant_id", "type", "occurred_at")
    op.create_table(
        "webhook_endpoints",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.Column("url", sa.String(length=2000), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("event_types", sa.JSON(), nullable=False),
        sa.Column("secret_sealed", sa.Text(), nullable=False),
        sa.Column("created_at", _UTC, nullable=False),
        sa.Column("updated_at", _UTC, nullable=False),
        _fk("webhook_endpoints", "tenant_id", "tenants"),
        _pk("webhook_endpoints", "id"),
    )
    _index("webhook_endpoints", "tenant_id")
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.Column("endpoint_id", sa.String(length=36), nullable=False),
        sa.Column("event_id", _ID, nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", _UTC, nullable=False),
        sa.Column("last_attempt_at", _UTC, nullable=True),
        sa.Column("response_status", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.String(length=500), nullable=True),
        sa.Column("delivered_at", _UTC, nullable=True),
        sa.Column("created_at", _UTC, nullable=False),
        sa.CheckConstraint(
            "status IN ('pending', 'delivered', 'failed')",
            name=op.f("ck_webhook_deliveries_status"),
        ),
        _fk("webhook_deliveries", "tenant_id", "tenants"),
        _fk("webhook_deliveries", "endpoint_id", "webhook_endpoints"),
        _fk("webhook_deliveries", "event_id", "billing_events"),
        _pk("webhook_deliveries", "id"),
        sa.UniqueConstraint(
            "endpoint_id", "event_id", name=op.f("uq_webhook_deliveries_endpoint_id_event_id")
        ),
    )
    _index("webhook_deliveries", "status", "next_attempt_at")
    _index("webhook_deliveries", "tenant_id", "endpoint_id")


def upgrade() -> None:
    _price_plans()
    _billing_periods()
    _invoices()
    _invoice_lines()
    _events_and_webhooks()


def downgrade() -> None:
    for table in (
        "webhook_deliveries",
        "webhook_endpoints",
        "billing_events",
        "invoice_sequences",
        "invoice_lines",
        "invoices",
        "billing_periods",
        "price_plans",
    ):
        op.drop_table(table)
