"""What services hand back for publishing once their transaction has committed."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Outbound:
    """One MQTT publish the adapter performs after the database commit."""

    topic: str
    payload: bytes
    qos: int = 1
    track: str | None = None  # reported back once the broker acknowledged it


@dataclass(frozen=True, slots=True)
class Inbound:
    """One message as the broker delivered it to the hub."""

    topic: str
    payload: bytes
