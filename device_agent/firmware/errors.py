"""The firmware package's errors, under :class:`~device_agent.errors.AgentError`.

::

    FirmwareError             code "firmware_error"
    ├── OfferRefused          the offer's envelope or parameters are refused (code: the SUIT
    │                         or COSE error code, e.g. "suit_wrong_device", "suit_rollback")
    ├── ChunkRefused          a chunk is refused on arrival; nothing of it is stored
    │   ├── ForeignJob        for a job this device is not downloading
    │   ├── ChunkOutOfRange   index outside 0 .. chunk_count - 1 (a payload larger than declared)
    │   ├── ChunkSize         oversize or truncated for its index
    │   └── ChunkCorrupt      does not match its signed digest
    └── DownloadFailed        a ranged HTTP download failed (status, transport, length)

``code`` is a short stable string that ends up in logs and in the ``reason`` of
a ``failed`` step report.
"""

from __future__ import annotations

from device_agent.errors import AgentError


class FirmwareError(AgentError):
    """Base class of the firmware package's errors."""

    code = "firmware_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        """Carry ``message``; ``code`` overrides the class's code (e.g. a SUIT code)."""
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def reason(self) -> str:
        """``code: message``, the text a ``failed`` report carries."""
        return f"{self.code}: {self}"


class OfferRefused(FirmwareError):
    """The offered envelope (signature, device, sequence) or its parameters are refused."""

    code = "offer_refused"


class ChunkRefused(FirmwareError):
    """A chunk is refused on arrival; nothing of it was stored."""

    code = "chunk_refused"


class ForeignJob(ChunkRefused):
    """The chunk belongs to a job this device is not downloading."""

    code = "foreign_job"


class ChunkOutOfRange(ChunkRefused):
    """The chunk index is outside the image (a payload larger than declared)."""

    code = "chunk_out_of_range"


class ChunkSize(ChunkRefused):
    """The chunk is oversize or truncated for its index."""

    code = "chunk_size"


class ChunkCorrupt(ChunkRefused):
    """The chunk does not match its digest in the signed manifest."""

    code = "chunk_corrupt"


class DownloadFailed(FirmwareError):
    """A ranged HTTP download failed.

    Attributes:
        permanent: Retrying cannot help (401, 403, 404, 416): the job is abandoned.
    """

    code = "download_failed"

    def __init__(self, message: str, *, code: str | None = None, permanent: bool = False) -> None:
        """Carry ``message``; ``permanent`` says whether a retry is pointless."""
        super().__init__(message, code=code)
        self.permanent = permanent


__all__ = [
    "ChunkCorrupt",
    "ChunkOutOfRange",
    "ChunkRefused",
    "ChunkSize",
    "DownloadFailed",
    "FirmwareError",
    "ForeignJob",
    "OfferRefused",
]
