"""The hub's one error tree.

Services raise these; the REST layer maps them to HTTP statuses and the MQTT
layer to typed error replies::

    HubError
    ├── NotFound            (404) no such object *for this tenant*
    ├── Conflict            (409) unique key taken, state does not allow it
    ├── ValidationFailed    (422) input well-formed but not acceptable
    ├── Unauthenticated     (401) no or bad API key
    ├── PermissionDenied    (403) role does not allow the action
    ├── ClaimRefused        (MQTT) a provisioning claim was refused
    └── BrokerError         the MQTT broker could not be started or reached
        └── PortInUse       the configured port is already taken
"""

from __future__ import annotations


class HubError(Exception):
    """Base class of every error the hub raises on purpose."""

    code = "hub_error"
    http_status = 400


class NotFound(HubError):
    """The object does not exist, or belongs to another tenant."""

    code = "not_found"
    http_status = 404


class Conflict(HubError):
    """The request conflicts with existing state."""

    code = "conflict"
    http_status = 409


class ValidationFailed(HubError):
    """The input is well-formed but not acceptable."""

    code = "validation_failed"
    http_status = 422


class Unauthenticated(HubError):
    """No API key, or one that does not verify."""

    code = "unauthenticated"
    http_status = 401


class PermissionDenied(HubError):
    """The caller's role does not allow the action."""

    code = "permission_denied"
    http_status = 403


class ClaimRefused(HubError):
    """A device's provisioning claim was refused; ``code`` travels to the device."""

    code = "claim_refused"
    http_status = 403

    def __init__(
        self, code: str, message: str, *, tenant_id: str | None = None, target: str = ""
    ) -> None:
        super().__init__(message)
        self.code = code
        self.tenant_id = tenant_id
        self.target = target


class BrokerError(HubError):
    """The MQTT broker could not be started, configured or reached."""

    code = "broker_error"
    http_status = 503


class PortInUse(BrokerError):
    """A port the hub must bind is already taken by another process."""

    code = "port_in_use"
