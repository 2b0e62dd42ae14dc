"""What the metering API raises; every class is an :class:`~device_agent.errors.AgentError`.

::

    AgentError
    ├── ConfigError            a bad [metering] table (device_agent.errors)
    ├── StateError             the usage buffer cannot be read or written (device_agent.errors)
    └── UsageRefused           the record was not stored; nothing was minted
        ├── InvalidUsage       bad meter, quantity or dim (also a ValueError)
        ├── NotEntitled        the meter is not an enabled feature of the manifest
        ├── CapExceeded        over the period's cap under the "block" overage policy
        └── BufferFull         the buffer holds its bound; counted in ``dropped``

A refused record never gets a key: the device's sequence has no gap for it.
"""

from __future__ import annotations

from decimal import Decimal

from device_agent.errors import AgentError


class UsageRefused(AgentError):
    """The record was refused and not stored; ``code`` says why."""

    code = "refused"


class InvalidUsage(UsageRefused, ValueError):
    """The meter, quantity or dimension breaks the wire rules (docs/metering.md)."""

    code = "invalid"


class NotEntitled(UsageRefused):
    """The meter is not an enabled feature of the device's current manifest."""

    code = "not_entitled"

    def __init__(self, meter: str) -> None:
        super().__init__(f"{meter!r} is not an enabled feature of the current manifest")
        self.meter = meter


class CapExceeded(UsageRefused):
    """Recording would exceed the period's cap and the overage policy is ``block``."""

    code = "cap_exceeded"

    def __init__(self, meter: str, *, cap: int, used: Decimal, period_start: int) -> None:
        super().__init__(f"{meter!r}: cap {cap} per period reached (used {used})")
        self.meter, self.cap, self.used, self.period_start = meter, cap, used, period_start


class BufferFull(UsageRefused):
    """The buffer holds ``max_records`` unacknowledged records; the refusal was counted."""

    code = "buffer_full"

    def __init__(self, max_records: int, dropped: int) -> None:
        super().__init__(f"usage buffer full ({max_records} records); {dropped} dropped so far")
        self.max_records, self.dropped = max_records, dropped


__all__ = ["BufferFull", "CapExceeded", "InvalidUsage", "NotEntitled", "UsageRefused"]
