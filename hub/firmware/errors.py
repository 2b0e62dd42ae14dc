"""Typed errors of the firmware catalogue, delivery and rollouts.

All derive from :class:`hub.errors.HubError`; the REST layer maps ``http_status``
and ``code`` to the JSON error body, and the MQTT delivery path sends ``code``
in an ``ErrorReply``::

    HubError
    ├── ValidationFailed (422)
    │   ├── InvalidVersion         invalid_version
    │   ├── UnknownDeviceClass     unknown_device_class
    │   ├── UnknownProduct         unknown_product
    │   ├── UnknownFeature         unknown_feature
    │   ├── EmptyPayload           empty_payload
    │   ├── InvalidChunkSize       invalid_chunk_size
    │   ├── PackageTooLarge (413)  payload_too_large
    │   └── InvalidRollout         invalid_rollout
    ├── Conflict (409)
    │   ├── DuplicateVersion       duplicate_version
    │   ├── VersionNotNewer        version_not_newer
    │   ├── RolloutStateConflict   invalid_state
    │   └── JobNotActive           job_not_active
    ├── NotFound (404)
    │   └── UnknownJob             unknown_job
    ├── NotEntitled (403)          not_entitled
    ├── RangeNotSatisfiable (416)  range_not_satisfiable
    └── BlobError (500)            blob_error
"""

from __future__ import annotations

from hub.errors import Conflict, HubError, NotFound, ValidationFailed


class InvalidVersion(ValidationFailed):
    """The version is not a semantic version (https://semver.org, 2.0.0)."""

    code = "invalid_version"


class UnknownDeviceClass(ValidationFailed):
    """The device class does not exist for this tenant."""

    code = "unknown_device_class"


class UnknownProduct(ValidationFailed):
    """The required product does not exist for this tenant."""

    code = "unknown_product"


class UnknownFeature(ValidationFailed):
    """The required feature is not a feature of the required product."""

    code = "unknown_feature"


class EmptyPayload(ValidationFailed):
    """A firmware payload must hold at least one byte."""

    code = "empty_payload"


class InvalidChunkSize(ValidationFailed):
    """The requested chunk size is outside what the wire protocol allows."""

    code = "invalid_chunk_size"


class PackageTooLarge(ValidationFailed):
    """The payload (or the upload body) exceeds the catalogue's cap."""

    code = "payload_too_large"
    http_status = 413


class InvalidRollout(ValidationFailed):
    """A rollout definition is not acceptable (waves, thresholds, windows)."""

    code = "invalid_rollout"


class DuplicateVersion(Conflict):
    """The device class already has a package with this version."""

    code = "duplicate_version"


class VersionNotNewer(Conflict):
    """The version is not newer than the class's latest package (no downgrades)."""

    code = "version_not_newer"


class RolloutStateConflict(Conflict):
    """The rollout's state does not allow the requested action."""

    code = "invalid_state"


class JobNotActive(Conflict):
    """The firmware job is not (or no longer) in progress."""

    code = "job_not_active"


class UnknownJob(NotFound):
    """No such firmware job for this device (other devices' jobs look the same)."""

    code = "unknown_job"


class NotEntitled(HubError):
    """The device lacks the entitlement the package requires."""

    code = "not_entitled"
    http_status = 403


class RangeNotSatisfiable(HubError):
    """The requested byte range is outside the payload or not supported."""

    code = "range_not_satisfiable"
    http_status = 416

    def __init__(self, message: str, *, size: int) -> None:
        super().__init__(message)
        self.size = size


class BlobError(HubError):
    """The blob store could not store or read a payload."""

    code = "blob_error"
    http_status = 500
