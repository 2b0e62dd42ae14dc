"""Usage ingestion message rate through Mosquitto (issue 5): one record per message.

The same measurement as :mod:`bench.usage_ingest_mosquitto` (see
:mod:`bench.usage_ingest`) with the smallest batches a device can send, so the
hub's per-message work (paho, decoding, the router, one ack per message)
dominates: the "0.8 of the bare message rate" budget, in messages per second.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from bench.harness import BenchResult
from bench.manifest_fanout import mosquitto_binary
from bench.usage_ingest import Shape
from bench.usage_ingest_mosquitto import UsageMosquitto, measure

NAME = "usage_ingest_messages"
FULL = Shape(devices=20, messages=250, records=1)
QUICK = Shape(devices=10, messages=200, records=1)


def run(
    *, quick: bool, repeats: int, profile_dir: Path | None, say: Callable[[str], None] = print
) -> BenchResult:
    """Single-record usage messages through Mosquitto against the bare subscriber."""
    return measure(
        NAME, QUICK if quick else FULL, lambda d: UsageMosquitto(d, mosquitto_binary()),
        repeats, profile_dir, say, unit="messages/s",
        description="Single-record usage messages stored, deduplicated and acknowledged per "
        "second through Mosquitto, against a bare paho subscriber receiving the same messages.",
    )  # fmt: skip
