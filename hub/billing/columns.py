"""Exact column types for money and quantities on every backend.

SQLite has no exact decimal type (SQLAlchemy binds ``NUMERIC`` as a float) and
its integers stop at 2^63, while an invoice line may carry a 10^18-unit
quantity or an amount beyond 2^63 minor units. Billing therefore stores both
as canonical decimal **text**: exact, unbounded, identical on SQLite and
PostgreSQL. Nothing sums these columns in SQL; the code does, in ``Decimal``
and ``int``.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

from sqlalchemy import Dialect, String
from sqlalchemy.types import TypeDecorator

QUANTITY_CHARS = 64
AMOUNT_CHARS = 48


def decimal_text(value: Decimal) -> str:
    """Plain notation without exponent or trailing zeros (``"12.5"``, ``"0"``)."""
    if value == 0:
        return "0"
    text = f"{value:f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


class DecimalText(TypeDecorator[Decimal]):
    """A ``Decimal`` stored as canonical text (see the module docstring)."""

    impl = String(QUANTITY_CHARS)
    cache_ok = True

    def process_bind_param(self, value: Decimal | None, dialect: Dialect) -> str | None:
        """Canonical text; floats are refused (a programming error)."""
        if value is None:
            return None
        if not isinstance(value, Decimal) or not value.is_finite():
            raise ValueError(f"DecimalText takes a finite Decimal, not {value!r}")
        text = decimal_text(value)
        if len(text) > QUANTITY_CHARS:
            raise ValueError("quantity too long to store")
        return text

    def process_result_value(self, value: str | None, dialect: Dialect) -> Decimal | None:
        """The stored ``Decimal``."""
        if value is None:
            return None
        try:
            return Decimal(value)
        except InvalidOperation:  # pragma: no cover - only if someone edits rows by hand
            raise ValueError(f"not a decimal: {value!r}") from None


class MinorUnits(TypeDecorator[int]):
    """An integer amount of minor units stored as decimal text."""

    impl = String(AMOUNT_CHARS)
    cache_ok = True

    def process_bind_param(self, value: int | None, dialect: Dialect) -> str | None:
        """Decimal text of the integer; bools and floats are refused."""
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"MinorUnits takes an int, not {value!r}")
        text = str(value)
        if len(text) > AMOUNT_CHARS:
            raise ValueError("amount too long to store")
        return text

    def process_result_value(self, value: str | None, dialect: Dialect) -> int | None:
        """The stored integer."""
        return None if value is None else int(value)
