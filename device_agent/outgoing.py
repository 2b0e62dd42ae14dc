"""What a sans-IO part of the agent asks the runner to publish."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One MQTT publish the caller should perform."""

    topic: str
    payload: bytes
    qos: int = 1
