"""Usage exports: every matching record as CSV or JSON, streamed.

Both formats carry the same fields in the same order (:data:`EXPORT_FIELDS`):
quantities as decimal text, timestamps as ISO 8601 UTC, ``over_cap`` as
``true``/``false``. Records come from :func:`hub.telemetry.queries.iter_records`
(time, then id order) a chunk at a time, so an export of millions of rows
holds one chunk in memory. CSV cells a spreadsheet would take for a formula
(starting ``=``, ``+``, ``-``, ``@``, tab or carriage return: a device chooses
its ``dimension`` text) are prefixed with ``'``.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator
from typing import Any, Literal

from hub.telemetry.queries import UsageRecordRow
from hub.telemetry.schemas import decimal_text

ExportFormat = Literal["csv", "json"]
EXPORT_FIELDS = (
    "id", "device_id", "boot_epoch", "seq", "meter", "quantity", "dimension",
    "recorded_at", "received_at", "account_id", "product_id", "entitlement_id", "over_cap",
)  # fmt: skip
MEDIA_TYPES: dict[str, str] = {"csv": "text/csv; charset=utf-8", "json": "application/json"}
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_ROWS_PER_CHUNK = 500


def record_dict(row: UsageRecordRow) -> dict[str, Any]:
    """One record as JSON-ready values, in :data:`EXPORT_FIELDS` order."""
    return {
        "id": row.id,
        "device_id": row.device_id,
        "boot_epoch": row.boot_epoch,
        "seq": row.seq,
        "meter": row.meter,
        "quantity": decimal_text(row.quantity),
        "dimension": row.dimension,
        "recorded_at": row.recorded_at.isoformat(),
        "received_at": row.received_at.isoformat(),
        "account_id": row.account_id,
        "product_id": row.product_id,
        "entitlement_id": row.entitlement_id,
        "over_cap": row.over_cap,
    }


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)
    return "'" + text if text.startswith(_FORMULA_START) else text


def csv_chunks(rows: Iterable[UsageRecordRow]) -> Iterator[str]:
    """The CSV text (header first), a few hundred rows per chunk."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(EXPORT_FIELDS)
    for count, row in enumerate(rows, 1):
        values = record_dict(row)
        writer.writerow([_cell(values[name]) for name in EXPORT_FIELDS])
        if count % _ROWS_PER_CHUNK == 0:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


def json_chunks(rows: Iterable[UsageRecordRow]) -> Iterator[str]:
    """A JSON array of record objects, a few hundred rows per chunk."""
    parts: list[str] = ["["]
    first = True
    for row in rows:
        parts.append(("\n" if first else ",\n") + json.dumps(record_dict(row)))
        first = False
        if len(parts) >= _ROWS_PER_CHUNK:
            yield "".join(parts)
            parts = []
    parts.append("\n]\n" if not first else "]\n")
    yield "".join(parts)


def chunks(rows: Iterable[UsageRecordRow], fmt: ExportFormat) -> Iterator[str]:
    """The export of ``rows`` in ``fmt``."""
    return csv_chunks(rows) if fmt == "csv" else json_chunks(rows)
