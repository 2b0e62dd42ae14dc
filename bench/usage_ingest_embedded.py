"""Usage ingestion through the embedded amqtt broker (issue 5).

See :mod:`bench.usage_ingest` for what is measured. The broker is the hub's
:class:`~hub.broker.embedded.EmbeddedBroker` (its auth and topic plugins) in
an asyncio loop of the benchmark process, as ``hub serve`` runs it next to
the hub's client, with an in-memory verifier holding the same logins.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from bench.harness import BenchResult
from bench.usage_ingest import HOST, MAX_PAYLOAD, Shape
from bench.usage_ingest_mosquitto import measure
from hub.broker.acl import kind_for_username
from hub.broker.embedded import EmbeddedBroker
from hub.broker.passwords import hash_password, verify_password
from hub.broker.principals import Principal, PrincipalKind

NAME = "usage_ingest_embedded"
FULL = Shape(devices=10, messages=5, records=1000)
QUICK = Shape(devices=5, messages=4, records=1000)


class _Verifier:
    """Logins from a dict (hashed), as the hub's database verifier would answer."""

    def __init__(self, credentials: dict[str, str]) -> None:
        self._hashes = {user: hash_password(secret) for user, secret in credentials.items()}

    def verify(self, username: str, password: str | None) -> Principal | None:
        stored = self._hashes.get(username)
        if stored is None or password is None or not verify_password(password, stored):
            return None
        kind = kind_for_username(username)
        if kind not in (PrincipalKind.DEVICE, PrincipalKind.HUB):
            return None
        return Principal(kind, username)


class UsageEmbedded:
    """The embedded broker in its own event-loop thread of this process."""

    def __init__(self, _directory: Path) -> None:
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="bench-amqtt", daemon=True
        )
        self._broker: EmbeddedBroker | None = None

    def _run(self, coro: Any) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(timeout=30)

    def start(self, credentials: dict[str, str]) -> None:
        """Start the broker on a free port."""
        self._thread.start()
        self._broker = EmbeddedBroker(
            host=HOST, port=0, verifier=_Verifier(credentials), max_payload_bytes=MAX_PAYLOAD
        )
        self._run(self._broker.start())
        self.port = self._broker.port

    def stop(self) -> None:
        """Stop the broker and its loop."""
        if self._broker is not None:
            self._run(self._broker.stop())
            self._broker = None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


def run(
    *, quick: bool, repeats: int, profile_dir: Path | None, say: Callable[[str], None] = print
) -> BenchResult:
    """Run usage ingestion through the embedded broker and the bare baseline."""
    return measure(
        NAME, QUICK if quick else FULL, UsageEmbedded, repeats, profile_dir, say,
        description="Usage records stored (deduplicated, acknowledged after commit) per second "
        "through the embedded amqtt broker, against a bare paho subscriber receiving the "
        "same batches.",
    )  # fmt: skip
