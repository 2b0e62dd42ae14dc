"""Invoice exports: CSV (one row per invoice line) and JSON.

CSV columns are :data:`CSV_COLUMNS`; amounts appear twice, as integer minor
units and as a decimal string in major units; quantities are decimal
strings. Text cells that a spreadsheet would run as a formula (starting with
``=``, ``+``, ``-``, ``@``, tab or carriage return) are prefixed with ``'``;
numeric cells never are, so a negative adjustment stays ``-150``.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from typing import Any

from hub.billing.schemas import InvoicePublic

CSV_COLUMNS: tuple[str, ...] = (
    "invoice_id",
    "invoice_number",
    "status",
    "account_id",
    "period_start",
    "period_end",
    "currency",
    "invoice_subtotal",
    "invoice_adjustments",
    "invoice_total",
    "invoice_total_decimal",
    "finalized_at",
    "line",
    "kind",
    "charge_period_start",
    "charge_period_end",
    "product_id",
    "meter",
    "aggregation",
    "description",
    "quantity",
    "amount",
    "amount_decimal",
)
_TEXT = frozenset({"invoice_number", "account_id", "product_id", "meter", "description"})
_FORMULA = ("=", "+", "-", "@", "\t", "\r")


def _safe(column: str, value: Any) -> str:
    text = "" if value is None else str(value)
    if column in _TEXT and text.startswith(_FORMULA):
        return "'" + text
    return text


def _rows(invoice: InvoicePublic) -> list[dict[str, Any]]:
    head = {
        "invoice_id": invoice.id,
        "invoice_number": invoice.number,
        "status": invoice.status,
        "account_id": invoice.account_id,
        "period_start": invoice.period_start.isoformat(),
        "period_end": invoice.period_end.isoformat(),
        "currency": invoice.currency,
        "invoice_subtotal": invoice.subtotal,
        "invoice_adjustments": invoice.adjustments,
        "invoice_total": invoice.total,
        "invoice_total_decimal": invoice.total_decimal,
        "finalized_at": invoice.finalized_at.isoformat() if invoice.finalized_at else None,
    }
    dumped = invoice.model_dump(mode="json")["lines"]
    return [
        {
            **head,
            "line": line["position"],
            "kind": line["kind"],
            "charge_period_start": line["period_start"],
            "charge_period_end": line["period_end"],
            "product_id": line["product_id"],
            "meter": line["meter"],
            "aggregation": line["aggregation"],
            "description": line["description"],
            "quantity": line["quantity"],
            "amount": line["amount"],
            "amount_decimal": line["amount_decimal"],
        }
        for line in dumped
    ]


def invoices_csv(invoices: Sequence[InvoicePublic]) -> str:
    """The invoices' lines as CSV text with a header row."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for invoice in invoices:
        for row in _rows(invoice):
            writer.writerow([_safe(column, row[column]) for column in CSV_COLUMNS])
    return buffer.getvalue()


def invoices_json(invoices: Sequence[InvoicePublic]) -> str:
    """The invoices with their lines as a JSON document ``{"invoices": [...]}``."""
    return json.dumps(
        {"invoices": [invoice.model_dump(mode="json") for invoice in invoices]},
        indent=2,
        sort_keys=True,
    )
