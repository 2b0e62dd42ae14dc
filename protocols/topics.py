"""Topic builders and the topic parser.

The topic tree (MQTT 3.1.1; every id obeys :mod:`protocols.ids`)::

    claim/{claim_client_id}/req     agent -> hub   claim request
    claim/{claim_client_id}/res     hub -> agent   claim result or error
    d/{device_id}/up/{kind}         device -> hub  (hello, status, ...)
    d/{device_id}/down/{kind}       hub -> device  (state, error, ...)

A device may publish only to ``d/{own id}/up/#`` and subscribe only to
``d/{own id}/down/#``; a claim session only to its own ``claim/{id}/...`` pair.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from protocols.errors import TopicError
from protocols.ids import check_id, is_claim_client_id, is_device_id

MAX_TOPIC_LENGTH = 256


class Direction(StrEnum):
    """Who publishes on a topic."""

    UP = "up"
    DOWN = "down"


class UpKind(StrEnum):
    """Kinds of device-to-hub topics."""

    HELLO = "hello"
    STATUS = "status"
    MANIFEST_ACK = "manifest_ack"
    SEAT = "seat"
    USAGE = "usage"
    FIRMWARE = "firmware"


class DownKind(StrEnum):
    """Kinds of hub-to-device topics."""

    STATE = "state"
    ERROR = "error"
    MANIFEST = "manifest"
    ROTATION = "rotation"
    SEAT = "seat"
    USAGE_ACK = "usage_ack"
    FIRMWARE = "firmware"


@dataclass(frozen=True, slots=True)
class DeviceTopic:
    """A parsed ``d/{device_id}/{up|down}/{kind}`` topic."""

    device_id: str
    direction: Direction
    kind: str


@dataclass(frozen=True, slots=True)
class ClaimTopic:
    """A parsed ``claim/{client_id}/{req|res}`` topic."""

    client_id: str
    is_request: bool


def device_up(device_id: str, kind: UpKind) -> str:
    """Build the topic a device publishes ``kind`` on."""
    return f"d/{_device(device_id)}/up/{kind.value}"


def device_down(device_id: str, kind: DownKind) -> str:
    """Build the topic the hub publishes ``kind`` to a device on."""
    return f"d/{_device(device_id)}/down/{kind.value}"


def device_up_filter(device_id: str) -> str:
    """The filter covering everything a device may publish."""
    return f"d/{_device(device_id)}/up/#"


def device_down_filter(device_id: str) -> str:
    """The filter a device subscribes to for everything sent to it."""
    return f"d/{_device(device_id)}/down/#"


def claim_request(client_id: str) -> str:
    """Build the topic a claim session publishes its request on."""
    return f"claim/{_claim(client_id)}/req"


def claim_response(client_id: str) -> str:
    """Build the topic the hub answers a claim session on."""
    return f"claim/{_claim(client_id)}/res"


_UP_KINDS = frozenset(kind.value for kind in UpKind)
_DOWN_KINDS = frozenset(kind.value for kind in DownKind)

HUB_UP_FILTER = "d/+/up/#"
HUB_CLAIM_FILTER = "claim/+/req"


def parse(topic: str) -> DeviceTopic | ClaimTopic:
    """Parse a concrete topic (no wildcards) into its parts.

    Raises:
        TopicError: for anything outside the topic tree or with a bad id.
    """
    if not isinstance(topic, str) or not topic or len(topic) > MAX_TOPIC_LENGTH:
        raise TopicError("topic empty or too long")
    parts = topic.split("/")
    if len(parts) == 4 and parts[0] == "d":
        return _parse_device(parts)
    if len(parts) == 3 and parts[0] == "claim" and parts[2] in ("req", "res"):
        return ClaimTopic(client_id=_claim(parts[1]), is_request=parts[2] == "req")
    raise TopicError(f"topic outside the hub's tree: {topic!r}")


def _parse_device(parts: list[str]) -> DeviceTopic:
    _, device_id, direction, kind = parts
    try:
        parsed_direction = Direction(direction)
    except ValueError:
        raise TopicError(f"bad direction {direction!r}") from None
    valid_kinds = _UP_KINDS if parsed_direction is Direction.UP else _DOWN_KINDS
    if kind not in valid_kinds:
        raise TopicError(f"unknown {direction} kind {kind!r}")
    return DeviceTopic(device_id=_device(device_id), direction=parsed_direction, kind=kind)


def _device(device_id: str) -> str:
    check_id(device_id, "device id")
    if not is_device_id(device_id):
        raise TopicError(f"not a device id: {device_id!r}")
    return device_id


def _claim(client_id: str) -> str:
    check_id(client_id, "claim client id")
    if not is_claim_client_id(client_id):
        raise TopicError(f"not a claim client id: {client_id!r}")
    return client_id
