"""Two small records in the firmware directory, each written atomically.

* ``suit.cbor``: the SUIT processor's anti-rollback state, the highest
  sequence number accepted (``{"format": 1, "highest": uint | null}``). It is
  advanced only when an image is **confirmed**, so a reverted or failed
  install can be retried and a confirmed one can never be downgraded; it
  never goes back, whatever is asked.
* ``offer.cbor``: the offer being installed (job id, signed envelope, chunk
  size, HTTP path), written before the install starts so that a restarted
  agent can re-verify the envelope and keep checking chunks against it.

Both go through :func:`device_agent.storage.atomic_write` (temp file, fsync,
rename, fsync of the directory). A file that does not decode is refused with
:class:`~device_agent.errors.StateError`, never silently replaced.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from device_agent.errors import StateError
from device_agent.storage import atomic_write, read_optional
from protocols import cbor, suit
from protocols.errors import ProtocolError
from protocols.firmware_messages import FirmwareOffer
from protocols.messages import decode_as, encode_message

ROLLBACK_FILE = "suit.cbor"
OFFER_FILE = "offer.cbor"
FORMAT_VERSION = 1
_MAX_FILE = 64 * 1024


def _no_crash(point: str) -> None:
    del point


def _persist(path: Path, data: bytes, crash: Callable[[str], None]) -> None:
    crash(f"{path.name}:before")
    atomic_write(path, data)
    crash(f"{path.name}:after")


def _load(path: Path) -> Any:
    raw = read_optional(path)
    if raw is None:
        return None
    try:
        doc = cbor.decode(raw, max_size=_MAX_FILE)
    except ProtocolError as exc:
        raise StateError(f"refusing {path}: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT_VERSION:
        raise StateError(f"refusing {path}: not a known format")
    return doc


class RollbackStore:
    """The persisted anti-rollback state (``suit.cbor``)."""

    def __init__(self, root: Path, crash: Callable[[str], None] = _no_crash) -> None:
        """Load the state from ``root``; absent means nothing accepted yet.

        ``crash`` is called before and after every write (crash tests).

        Raises:
            StateError: the file is corrupt.
        """
        self.path = root / ROLLBACK_FILE
        self._crash = crash
        doc = _load(self.path)
        highest = None if doc is None else doc.get("highest")
        if highest is not None and (type(highest) is not int or highest < 0):
            raise StateError(f"refusing {self.path}: bad sequence number")
        self._state = suit.SuitState(highest=highest)

    @property
    def state(self) -> suit.SuitState:
        """The highest sequence number accepted, as the SUIT processor takes it."""
        return self._state

    @property
    def installed(self) -> int:
        """The highest accepted sequence number, 0 before the first."""
        return self._state.highest or 0

    def advance(self, sequence: int) -> bool:
        """Record ``sequence`` as accepted if it is higher than the stored one.

        Returns:
            Whether the file was written (a lower or equal number changes nothing).

        Raises:
            StateError: the file could not be written (the state is unchanged).
        """
        if self._state.highest is not None and sequence <= self._state.highest:
            return False
        doc = {"format": FORMAT_VERSION, "highest": sequence}
        _persist(self.path, cbor.encode(doc), self._crash)
        self._state = suit.SuitState(highest=sequence)
        return True


@dataclass(frozen=True, slots=True)
class OfferFile:
    """The offer being installed, in ``offer.cbor``."""

    root: Path
    crash: Callable[[str], None] = field(default=_no_crash, compare=False)

    @property
    def path(self) -> Path:
        """Where the offer lives."""
        return self.root / OFFER_FILE

    def save(self, offer: FirmwareOffer) -> None:
        """Persist ``offer`` atomically (before the install starts)."""
        doc = {"format": FORMAT_VERSION, "offer": encode_message(offer)}
        _persist(self.path, cbor.encode(doc), self.crash)

    def load(self) -> FirmwareOffer | None:
        """The persisted offer, or ``None``.

        Raises:
            StateError: the file is corrupt or does not hold a valid offer.
        """
        doc = _load(self.path)
        if doc is None:
            return None
        encoded = doc.get("offer")
        if not isinstance(encoded, bytes):
            raise StateError(f"refusing {self.path}: no offer")
        try:
            return decode_as(FirmwareOffer, encoded)
        except ProtocolError as exc:
            raise StateError(f"refusing {self.path}: {exc}") from exc


__all__ = ["OFFER_FILE", "ROLLBACK_FILE", "OfferFile", "RollbackStore"]
