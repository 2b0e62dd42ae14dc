"""Usage metering messages (issue #5): batches of usage records and their acknowledgements.

Wire form (docs/metering.md, "Wire protocol")::

    d/{device_id}/up/usage        UsageBatch  {0: 1, 1: "usage_batch", 2: [record, ...]}
        record = [boot_epoch: uint, seq: uint, meter: tstr, quantity: uint / float,
                  ts: uint, ? dim: tstr]
    d/{device_id}/down/usage_ack  UsageAck    {0: 1, 1: "usage_ack", 2: [result, ...]}
        result = [boot_epoch: uint, seq: uint, code: tstr]

Decoding a :class:`UsageBatch` checks only the structure needed to answer per
record (1..1000 arrays of 5 or 6 elements whose first two are uints) and keeps
each record as a :class:`RawUsageRecord`; :func:`parse_record` validates the
rest of one record and raises :class:`~protocols.errors.MessageError` with a
short reason, so a receiver can refuse bad records one by one while it keeps
the good ones. A :class:`UsageAck` is validated completely when decoded.

Every message type defined here is listed in :data:`MESSAGES`, which
:data:`protocols.messages.MESSAGE_TYPES` merges into the one decoder registry.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Final, NamedTuple

from protocols import cbor
from protocols.errors import MessageError
from protocols.fields import UINT64_MAX, Message, key, text, uint

MAX_RECORDS: Final = 1000
"""Records in one :class:`UsageBatch` (and results in one :class:`UsageAck`): 1..1000."""
MAX_METER_LENGTH: Final = 64
MAX_DIM_LENGTH: Final = 64
MAX_QUANTITY: Final = 10**12
DEVICE_BATCH_BYTES: Final = 48 * 1024
"""The device keeps an encoded batch at or below this size (the hub's cap is 64 KiB)."""

ACK_CODES: Final = ("stored", "duplicate", "conflict", "quarantined", "rejected")
"""Every code is final: the device deletes the record on any of them, and only on them."""

_RECORD_MIN, _RECORD_MAX = 5, 6
_check_meter = text(MAX_METER_LENGTH)
_check_dim = text(MAX_DIM_LENGTH)


class RawUsageRecord(tuple[Any, ...]):
    """One record as received: the key checked, the other values still raw.

    It *is* the wire array ``[boot_epoch, seq, meter, quantity, ts, ?dim]`` (a
    tuple of 5 or 6 items), so it encodes as a CBOR array as it stands.
    ``boot_epoch`` and ``seq`` are validated uints; the other items are
    whatever the sender put there until :func:`parse_record` checks them.
    """

    __slots__ = ()

    def __new__(cls, items: tuple[Any, ...] | list[Any]) -> RawUsageRecord:
        """Check the structure of one wire record.

        Raises:
            MessageError: not an array of 5 or 6 items whose first two are uints.
        """
        if not isinstance(items, list | tuple) or not _RECORD_MIN <= len(items) <= _RECORD_MAX:
            raise MessageError("a usage record must be an array of 5 or 6 items")
        try:
            uint(items[0])
            uint(items[1])
        except MessageError:
            raise MessageError("a usage record starts with two uints (boot_epoch, seq)") from None
        return super().__new__(cls, items)

    @property
    def boot_epoch(self) -> int:
        """The device's boot epoch (first half of the key)."""
        return int(self[0])

    @property
    def seq(self) -> int:
        """The sequence number within the boot epoch (second half of the key)."""
        return int(self[1])

    @property
    def key(self) -> tuple[int, int]:
        """``(boot_epoch, seq)``: with the topic's device id, the idempotency key."""
        return (self.boot_epoch, self.seq)


@dataclass(frozen=True, slots=True)
class UsageRecord:
    """One validated usage record (see :func:`parse_record`)."""

    boot_epoch: int
    seq: int
    meter: str
    quantity: int | float
    ts: int
    dim: str | None = None

    @property
    def key(self) -> tuple[int, int]:
        """``(boot_epoch, seq)``."""
        return (self.boot_epoch, self.seq)

    def to_raw(self) -> RawUsageRecord:
        """The wire array (``dim`` omitted when ``None``)."""
        items: tuple[Any, ...] = (self.boot_epoch, self.seq, self.meter, self.quantity, self.ts)
        return RawUsageRecord(items if self.dim is None else (*items, self.dim))


def check_quantity(value: Any) -> int | float:
    """Validate a usage quantity: a finite number in ``0..10**12`` (bool refused).

    Raises:
        MessageError: with a short reason.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MessageError("quantity must be a number")
    if isinstance(value, float) and not math.isfinite(value):
        raise MessageError("quantity must be finite")
    if value < 0 or (isinstance(value, float) and math.copysign(1.0, value) < 0):
        raise MessageError("quantity must not be negative")
    if value > MAX_QUANTITY:
        raise MessageError(f"quantity exceeds {MAX_QUANTITY}")
    return value


def _utf8_text(check: Any, value: Any, what: str) -> str:
    try:
        result: str = check(value)
        result.encode("utf-8")
    except MessageError as exc:
        raise MessageError(f"{what}: {exc}") from None
    except UnicodeEncodeError:
        raise MessageError(f"{what}: not valid UTF-8") from None
    return result


def check_meter(value: Any) -> str:
    """Validate a meter key: text of 1..64 characters, no control characters.

    Raises:
        MessageError: with a short reason.
    """
    return _utf8_text(_check_meter, value, "meter")


def check_dim(value: Any) -> str:
    """Validate a dimension value: text of 1..64 characters, no control characters.

    Raises:
        MessageError: with a short reason.
    """
    return _utf8_text(_check_dim, value, "dim")


def parse_record(raw: RawUsageRecord) -> UsageRecord:
    """Validate every value of one received record.

    Raises:
        MessageError: with a short reason (meter, quantity, ts or dim invalid).
    """
    meter = check_meter(raw[2])
    try:
        quantity = check_quantity(raw[3])
    except MessageError as exc:
        raise MessageError(str(exc)) from None
    try:
        ts = uint(raw[4])
    except MessageError:
        raise MessageError("ts must be an unsigned integer") from None
    dim = check_dim(raw[5]) if len(raw) == _RECORD_MAX else None
    return UsageRecord(raw.boot_epoch, raw.seq, meter, quantity, ts, dim)


def _records(value: Any) -> tuple[RawUsageRecord, ...]:
    """The batch's records, each checked exactly as :class:`RawUsageRecord` checks it.

    A batch holds up to 1,000 records and the hub decodes tens of thousands a
    second, so the common shape (a list of 5 or 6 items starting with two
    in-range ints) is checked inline and wrapped without a second check;
    anything else goes through the constructor, which raises the reason.
    """
    if not isinstance(value, list | tuple) or not 1 <= len(value) <= MAX_RECORDS:
        raise MessageError(f"records must be an array of 1..{MAX_RECORDS}")
    make = tuple.__new__
    records = []
    for item in value:
        if (
            type(item) is list
            and _RECORD_MIN <= len(item) <= _RECORD_MAX
            and type(item[0]) is int  # bool is a subclass, not this type
            and type(item[1]) is int
            and 0 <= item[0] <= UINT64_MAX
            and 0 <= item[1] <= UINT64_MAX
        ):
            records.append(make(RawUsageRecord, item))
        else:
            records.append(RawUsageRecord(item))
    return tuple(records)


class AckResult(NamedTuple):
    """One answer of a :class:`UsageAck`: the wire array ``[boot_epoch, seq, code]``."""

    boot_epoch: int
    seq: int
    code: str

    @property
    def key(self) -> tuple[int, int]:
        """``(boot_epoch, seq)``."""
        return (self.boot_epoch, self.seq)


def _result(value: Any) -> AckResult:
    if not isinstance(value, list | tuple) or len(value) != 3:
        raise MessageError("an ack result must be an array [boot_epoch, seq, code]")
    boot_epoch, seq, code = value
    if code not in ACK_CODES:
        raise MessageError(f"ack code must be one of {', '.join(ACK_CODES)}")
    return AckResult(uint(boot_epoch), uint(seq), str(code))


def _results(value: Any) -> tuple[AckResult, ...]:
    if not isinstance(value, list | tuple) or not 1 <= len(value) <= MAX_RECORDS:
        raise MessageError(f"results must be an array of 1..{MAX_RECORDS}")
    return tuple(_result(item) for item in value)


@dataclass(frozen=True, slots=True)
class UsageBatch(Message):
    """Device → hub on ``d/{id}/up/usage`` (QoS 1): 1..1000 usage records."""

    TYPE: ClassVar[str] = "usage_batch"
    records: tuple[RawUsageRecord, ...] = key(2, _records)


@dataclass(frozen=True, slots=True)
class UsageAck(Message):
    """Hub → device on ``d/{id}/down/usage_ack`` (QoS 1), after the hub's commit."""

    TYPE: ClassVar[str] = "usage_ack"
    results: tuple[AckResult, ...] = key(2, _results)


def record_size(record: RawUsageRecord) -> int:
    """Encoded size of one record inside a batch's array, in bytes."""
    return len(cbor.encode(record))


BATCH_OVERHEAD: Final = 24
"""Upper bound of a :class:`UsageBatch`'s bytes besides its records (map, v, t, array head)."""

MESSAGES: tuple[type[Message], ...] = (UsageBatch, UsageAck)

__all__ = [
    "ACK_CODES",
    "BATCH_OVERHEAD",
    "DEVICE_BATCH_BYTES",
    "MAX_DIM_LENGTH",
    "MAX_METER_LENGTH",
    "MAX_QUANTITY",
    "MAX_RECORDS",
    "MESSAGES",
    "AckResult",
    "RawUsageRecord",
    "UsageAck",
    "UsageBatch",
    "UsageRecord",
    "check_dim",
    "check_meter",
    "check_quantity",
    "parse_record",
    "record_size",
]
