"""Where the meter reads what the manifest allows: the agent's trust state, read-only.

The agent's runner accepts manifests and writes ``state_dir/trust.cbor``; the
application (another thread or process) only reads it. :class:`ManifestView`
reopens the file whenever it changes on disk (verifying it again, as the agent
does at start) and answers with the same rules as
:class:`device_agent.features.Features`: a feature counts only while the
manifest's lease runs (judged at ``max(now, signed time anchor)``), and safe
defaults (nothing enabled) otherwise. It never writes, so it cannot race the
runner's atomic writes of the trust file.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Protocol

from device_agent import trust
from device_agent.errors import StateError
from device_agent.identity import Identity
from device_agent.trust_store import TRUST_FILE, TrustStore
from protocols.manifest import FeatureEntry


class Entitlements(Protocol):
    """What the meter needs to know about the device's entitlements."""

    def entry(self, key: str, *, now: int) -> FeatureEntry | None:
        """The feature's entry if it is enabled at ``now``, else ``None``."""
        ...

    def effective_now(self, now: int) -> int:
        """The time caps are counted at: never earlier than the latest signed time."""
        ...


class ManifestView:
    """Read-only, self-refreshing view of ``state_dir/trust.cbor``."""

    def __init__(self, state_dir: Path, identity: Identity) -> None:
        """Read the trust state of ``identity`` (reloaded when the file changes).

        Raises:
            StateError: the trust file is corrupt or cannot be read.
        """
        self._state_dir = state_dir
        self._identity = identity
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._state = trust.initial_state(identity.device_id, identity.anchors)
        self._refresh()

    def entry(self, key: str, *, now: int) -> FeatureEntry | None:
        """The feature's entry if it is enabled at ``now``, else ``None``."""
        state = self._refresh()
        entry = trust.effective_features(state, now=now).get(key)
        return entry if entry is not None and entry.enabled else None

    def effective_now(self, now: int) -> int:
        """``max(now, time anchor of the trusted state)``."""
        return trust.effective_now(self._refresh(), now)

    def _refresh(self) -> trust.TrustedState:
        path = self._state_dir / TRUST_FILE
        with self._lock:
            try:
                info = os.stat(path)
                stamp: tuple[int, int, int] | None = (info.st_ino, info.st_mtime_ns, info.st_size)
            except FileNotFoundError:
                stamp = None
            except OSError as exc:
                raise StateError(f"cannot read {path}: {exc}") from exc
            if stamp != self._stamp:
                self._state = TrustStore.open(self._state_dir, self._identity).state
                self._stamp = stamp
            return self._state


__all__ = ["Entitlements", "ManifestView"]
