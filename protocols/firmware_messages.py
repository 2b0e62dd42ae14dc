"""Firmware delivery messages (issue #4): offers, chunk requests and replies, install step reports.

Hub → device on ``d/{id}/down/firmware`` (QoS 1): :class:`FirmwareOffer`,
:class:`FirmwareChunk`, :class:`FirmwareCancel`, :class:`FirmwareReportAck`.
Device → hub on ``d/{id}/up/firmware`` (QoS 1): :class:`FirmwareQuery`,
:class:`FirmwareChunkRequest`, :class:`FirmwareReport`. Refusals of a device's
request travel as :class:`protocols.messages.ErrorReply` on ``d/{id}/down/error``
with one of :data:`CHUNK_ERROR_CODES`. The whole exchange is described in
``docs/firmware-agent.md`` (section "Wire protocol").

Every message type defined here is listed in :data:`MESSAGES`, which
:data:`protocols.messages.MESSAGE_TYPES` merges into the one decoder registry.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from protocols.errors import MessageError
from protocols.fields import MAX_TEXT, Message, byte_string, one_of, text, uint
from protocols.fields import key as _key

JOB_PREFIX = "job-"
"""Every firmware job id is ``"job-"`` followed by 24 lowercase hex digits."""
_JOB_PATTERN = re.compile(r"job-[0-9a-f]{24}")

MAX_ENVELOPE = 32 * 1024
"""Largest SUIT envelope an offer may carry (bytes)."""
MIN_CHUNK_SIZE = 1024
MAX_CHUNK_SIZE = 32 * 1024
MAX_CHUNK_WINDOW = 16
"""Most chunks one :class:`FirmwareChunkRequest` may ask for."""
MAX_ACK_KEYS = 64
MAX_REPORT_KEY = 256
MAX_HTTP_PATH = 256

REPORT_STEPS = (
    "downloading",
    "downloaded",
    "verified",
    "installing",
    "rebooting",
    "confirmed",
    "failed",
    "reverted",
)
"""The step names a :class:`FirmwareReport` may carry, in the order an install reaches them."""

CHUNK_ERROR_CODES = ("unknown_job", "not_entitled", "chunk_out_of_range", "job_not_active")
"""``ErrorReply.code`` values the hub answers a bad :class:`FirmwareChunkRequest` with."""


def is_job_id(value: object) -> bool:
    """Return whether ``value`` has the shape of a firmware job id."""
    return isinstance(value, str) and _JOB_PATTERN.fullmatch(value) is not None


def _job_id(value: Any) -> str:
    if not is_job_id(value):
        raise MessageError(f"expected a job id ({JOB_PREFIX} and 24 lowercase hex digits)")
    return str(value)


def _bounded_uint(low: int, high: int) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        number = uint(value)
        if not low <= number <= high:
            raise MessageError(f"must be {low}..{high}")
        return number

    return check


def _http_path(value: Any) -> str:
    path = text(MAX_HTTP_PATH)(value)
    if not path.startswith("/") or path.startswith("//"):
        raise MessageError("http_path must be an absolute path on the hub's API")
    return path


def _ack_keys(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_ACK_KEYS:
        raise MessageError(f"keys must be an array of 1..{MAX_ACK_KEYS} texts")
    check = text(MAX_REPORT_KEY)
    return tuple(check(item) for item in value)


@dataclass(frozen=True, slots=True)
class FirmwareOffer(Message):
    """Hub → device: install the image a signed SUIT envelope describes.

    ``envelope`` is signed by the hub's *firmware* key (the device's
    ``"firmware"`` trust anchor); ``chunk_size`` equals the envelope's chunk
    parameter; ``http_path``, when present, is the path on the hub's REST API
    for a ranged HTTP download of the payload.
    """

    TYPE: ClassVar[str] = "fw_offer"
    job_id: str = _key(2, _job_id)
    envelope: bytes = _key(3, byte_string(1, MAX_ENVELOPE))
    chunk_size: int = _key(4, _bounded_uint(MIN_CHUNK_SIZE, MAX_CHUNK_SIZE))
    http_path: str | None = _key(5, _http_path, optional=True)


@dataclass(frozen=True, slots=True)
class FirmwareChunk(Message):
    """Hub → device: chunk ``index`` of the job's payload (unverified until checked)."""

    TYPE: ClassVar[str] = "fw_chunk"
    job_id: str = _key(2, _job_id)
    index: int = _key(3, uint)
    data: bytes = _key(4, byte_string(1, MAX_CHUNK_SIZE))


@dataclass(frozen=True, slots=True)
class FirmwareCancel(Message):
    """Hub → device: the job is withdrawn (``reason`` says why)."""

    TYPE: ClassVar[str] = "fw_cancel"
    job_id: str = _key(2, _job_id)
    reason: str = _key(3, text(MAX_TEXT))


@dataclass(frozen=True, slots=True)
class FirmwareReportAck(Message):
    """Hub → device: the step-report idempotency keys the hub has committed."""

    TYPE: ClassVar[str] = "fw_report_ack"
    keys: tuple[str, ...] = _key(2, _ack_keys)


@dataclass(frozen=True, slots=True)
class FirmwareQuery(Message):
    """Device → hub at every connect: what is installed, which job the device works on."""

    TYPE: ClassVar[str] = "fw_query"
    installed_seq: int = _key(2, uint)
    job_id: str | None = _key(3, _job_id, optional=True)


@dataclass(frozen=True, slots=True)
class FirmwareChunkRequest(Message):
    """Device → hub: send chunks ``index .. index + count - 1`` of the job's payload."""

    TYPE: ClassVar[str] = "fw_chunk_req"
    job_id: str = _key(2, _job_id)
    index: int = _key(3, uint)
    count: int = _key(4, _bounded_uint(1, MAX_CHUNK_WINDOW))


@dataclass(frozen=True, slots=True)
class FirmwareReport(Message):
    """Device → hub: an install step reached, under a once-minted idempotency key."""

    TYPE: ClassVar[str] = "fw_report"
    job_id: str = _key(2, _job_id)
    step: str = _key(3, one_of(*REPORT_STEPS))
    key: str = _key(4, text(MAX_REPORT_KEY))
    at: int = _key(5, uint)
    reason: str | None = _key(6, text(MAX_TEXT), optional=True)
    installed_seq: int | None = _key(7, uint, optional=True)


MESSAGES: tuple[type[Message], ...] = (
    FirmwareOffer,
    FirmwareChunk,
    FirmwareCancel,
    FirmwareReportAck,
    FirmwareQuery,
    FirmwareChunkRequest,
    FirmwareReport,
)

__all__ = [
    "CHUNK_ERROR_CODES",
    "JOB_PREFIX",
    "MAX_CHUNK_SIZE",
    "MAX_CHUNK_WINDOW",
    "MAX_ENVELOPE",
    "MESSAGES",
    "MIN_CHUNK_SIZE",
    "REPORT_STEPS",
    "FirmwareCancel",
    "FirmwareChunk",
    "FirmwareChunkRequest",
    "FirmwareOffer",
    "FirmwareQuery",
    "FirmwareReport",
    "FirmwareReportAck",
    "is_job_id",
]
