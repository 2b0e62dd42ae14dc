"""The device agent's error tree.

::

AgentError
├── ConfigError        the agent's configuration file is unusable
├── StateError         on-disk state is missing, corrupt or unwritable
├── ClaimFailed        the hub refused the provisioning claim (``code`` says why)
└── TransportError     the broker could not be reached or dropped us
    └── NotAuthorized  the broker refused our credentials or a subscription
"""

from __future__ import annotations


class AgentError(Exception):
    """Base class of every device agent error."""


class ConfigError(AgentError):
    """The configuration file is missing, malformed or inconsistent."""


class StateError(AgentError):
    """On-disk agent state cannot be read or written."""


class ClaimFailed(AgentError):
    """The hub refused the claim; ``code`` is the hub's error code."""

    def __init__(self, code: str, message: str, *, server_time: int | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.server_time = server_time


class TransportError(AgentError):
    """The broker could not be reached, or the connection was lost."""


class NotAuthorized(TransportError):
    """The broker refused the credentials or a subscription."""
