"""Step reports of a firmware install, each with an idempotency key.

A report is minted by the pure install core (:mod:`device_agent.firmware.install`)
together with the transition that caused it, lands in the install state's
*outbox* and is persisted with that state **before** anything is sent. A resend
after a crash therefore carries the very same key, and the hub deduplicates on
it. The key names the device, the job and the device's report counter::

    <device_id>/<job_id>/<index>        (each part percent-encoded)

``index`` is a per-device counter that never goes back (it is not reset when a
job starts), so a retried job whose reports happen to fall on the same steps
still gets fresh keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from urllib.parse import quote

from device_agent.errors import StateError


class ReportStep(StrEnum):
    """The steps an install reports to the hub."""

    DOWNLOADING = "downloading"
    DOWNLOADED = "downloaded"
    VERIFIED = "verified"
    INSTALLING = "installing"
    REBOOTING = "rebooting"
    CONFIRMED = "confirmed"
    FAILED = "failed"
    REVERTED = "reverted"


@dataclass(frozen=True)
class StepReport:
    """One step report, as minted and persisted before it is sent.

    Attributes:
        job_id: The hub's install job.
        step: The step reached.
        reason: Why the install failed or reverted; ``None`` otherwise.
        key: The idempotency key (see :func:`mint_key`).
        at: When the transition happened (seconds since the epoch).
        installed_seq: Sequence number of the image in the active slot once the
            transition is done (the new one on ``confirmed``), when known.
    """

    job_id: str
    step: ReportStep
    reason: str | None
    key: str
    at: int
    installed_seq: int | None = None

    def to_wire(self) -> dict[str, Any]:
        """The report as a CBOR-ready map with text keys (for ``install.cbor``)."""
        doc: dict[str, Any] = {
            "job_id": self.job_id,
            "step": self.step.value,
            "reason": self.reason,
            "key": self.key,
            "at": self.at,
        }
        if self.installed_seq is not None:
            doc["installed_seq"] = self.installed_seq
        return doc

    @classmethod
    def from_wire(cls, doc: Any) -> StepReport:
        """Rebuild a report from :meth:`to_wire` output.

        Raises:
            StateError: ``doc`` is not a well-formed report.
        """
        if not isinstance(doc, dict) or set(doc) - {"installed_seq"} != _REPORT_FIELDS:
            raise StateError("a stored report is not a report map")
        reason = doc["reason"]
        at = doc["at"]
        installed = doc.get("installed_seq")
        if installed is not None and (type(installed) is not int or installed < 0):
            raise StateError("a stored report's installed sequence is not an unsigned integer")
        if not all(isinstance(doc[name], str) for name in ("job_id", "step", "key")):
            raise StateError("a stored report has a field of the wrong type")
        if not (reason is None or isinstance(reason, str)):
            raise StateError("a stored report's reason is not text")
        if not isinstance(at, int) or isinstance(at, bool):
            raise StateError("a stored report's time is not an integer")
        try:
            step = ReportStep(doc["step"])
        except ValueError as exc:
            raise StateError(f"unknown report step {doc['step']!r}") from exc
        return cls(
            job_id=doc["job_id"],
            step=step,
            reason=reason,
            key=doc["key"],
            at=at,
            installed_seq=installed,
        )


_REPORT_FIELDS = frozenset({"job_id", "step", "reason", "key", "at"})


def mint_key(device_id: str, job_id: str, index: int) -> str:
    """The idempotency key of the ``index``-th report of ``device_id``.

    Args:
        device_id: The reporting device.
        job_id: The install job the report belongs to.
        index: The device's report counter (never reused).

    Returns:
        ``device_id/job_id/index`` with both ids percent-encoded, so the key
        is unambiguous whatever characters the ids hold.
    """
    return f"{quote(device_id, safe='')}/{quote(job_id, safe='')}/{index}"


__all__ = ["ReportStep", "StepReport", "mint_key"]
