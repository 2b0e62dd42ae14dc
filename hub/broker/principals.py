"""Who is on the other end of an MQTT session, and how the broker asks.

Both brokers' access rules are written in terms of a :class:`Principal`. The
embedded broker's plugin asks a :class:`CredentialVerifier` (backed by the hub
database in production, by a dict in unit tests) to turn a login into one.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol


class PrincipalKind(StrEnum):
    """The three kinds of MQTT session the hub's brokers admit."""

    DEVICE = "device"  # username == client id == device id, own subtree only
    CLAIM = "claim"  # provisioning session, its own claim/{id}/ pair only
    HUB = "hub"  # the hub's own workers


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated MQTT identity."""

    kind: PrincipalKind
    username: str


class CredentialVerifier(Protocol):
    """Turns a login into a principal, or refuses it.

    Implementations are synchronous (the embedded broker calls them in a worker
    thread), must compare secrets in constant time, and must never log them.
    """

    def verify(self, username: str, password: str | None) -> Principal | None:
        """Return the principal for a valid login, ``None`` to refuse it."""
        ...
