"""Usage ingestion through Mosquitto (issue 5): records/s stored, deduplicated, acknowledged.

See :mod:`bench.usage_ingest` for what is measured. The broker is Mosquitto
with the hub's tuning (as :class:`bench.manifest_fanout.BenchBroker`) and the
hub's device ACL pattern (``d/%u/up/+`` write, ``d/%u/down/#`` read), one
login per simulated device.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.harness import BenchResult, Sample, interleave, median
from bench.manifest_fanout import free_port, mosquitto_binary
from bench.usage_ingest import (
    BARE_USER,
    HOST,
    HUB_USER,
    MAX_PAYLOAD,
    RECORDS_PER_SECOND_TARGET,
    TARGET_RATIO,
    Shape,
    UsageBench,
)
from hub.broker.passwords import hash_password

NAME = "usage_ingest_mosquitto"
UNIT = "records/s"
FULL = Shape(devices=20, messages=10, records=1000)
QUICK = Shape(devices=10, messages=5, records=1000)


class UsageMosquitto:
    """Mosquitto as a child process with per-device logins and the hub's ACL patterns."""

    def __init__(self, directory: Path, binary: str) -> None:
        self.directory = directory
        self.binary = binary
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, credentials: dict[str, str]) -> None:
        """Write password file, ACL and config; start; wait for the port."""
        self.port = free_port()
        passwords = self.directory / "passwords"
        passwords.write_text("".join(f"{u}:{hash_password(p)}\n" for u, p in credentials.items()))
        passwords.chmod(0o600)
        acl = self.directory / "acl"
        acl.write_text(
            f"user {HUB_USER}\ntopic read d/+/up/#\ntopic write d/+/down/#\n\n"
            f"user {BARE_USER}\ntopic read d/+/up/#\n\n"
            "pattern write d/%u/up/+\npattern read d/%u/down/#\n"
        )
        config = self.directory / "mosquitto.conf"
        config.write_text("\n".join([
            "per_listener_settings true", "persistence false", "log_dest stderr",
            "log_type error", "log_type warning", "connection_messages false",
            f"message_size_limit {MAX_PAYLOAD}", f"max_packet_size {MAX_PAYLOAD + 8192}",
            "max_queued_messages 100000", "max_inflight_messages 1000", "set_tcp_nodelay true",
            "retain_available false", *(["user root"] if os.geteuid() == 0 else []),
            f"listener {self.port} {HOST}", "allow_anonymous false",
            f"password_file {passwords}", f"acl_file {acl}",
        ]) + "\n")  # fmt: skip
        with (self.directory / "mosquitto.log").open("ab") as log_file:
            self._process = subprocess.Popen(
                [self.binary, "-c", str(config)], stdin=subprocess.DEVNULL,
                stdout=log_file, stderr=log_file,
            )  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError("mosquitto exited at start")
            with contextlib.suppress(OSError):
                socket.create_connection((HOST, self.port), timeout=0.2).close()
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"mosquitto not listening on {HOST}:{self.port}")

    def stop(self) -> None:
        """SIGTERM our own child (by PID), SIGKILL after 5 s."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def run(
    *, quick: bool, repeats: int, profile_dir: Path | None, say: Callable[[str], None] = print
) -> BenchResult:
    """Run usage ingestion through Mosquitto and the bare baseline; return the medians."""
    shape = QUICK if quick else FULL
    return measure(
        NAME, shape, lambda d: UsageMosquitto(d, mosquitto_binary()), repeats, profile_dir, say,
        description="Usage records stored (deduplicated, acknowledged after commit) per second "
        "through Mosquitto, against a bare paho subscriber receiving the same batches.",
    )  # fmt: skip


def measure(
    name: str,
    shape: Shape,
    make_broker: Callable[[Path], Any],
    repeats: int,
    profile_dir: Path | None,
    say: Callable[[str], None],
    *,
    description: str,
    unit: str = UNIT,
) -> BenchResult:
    """Warm up, interleave baseline and project rounds, and build the result.

    ``unit`` is ``records/s`` or ``messages/s`` (the same ratio either way).
    """
    divisor = shape.records if unit == "messages/s" else 1

    def per_unit(sample: Sample) -> Sample:
        return Sample(sample.value / divisor, sample.detail)

    logging.getLogger("hub").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as tmp:
        bench = UsageBench(make_broker(Path(tmp)), shape, Path(tmp), say)
        try:
            bench.start()
            warm = per_unit(bench.project_round())
            say(f"  warm-up: {warm.value:,.0f} {unit}")
            bench.baseline_round()
            project_runs, baseline_runs = interleave(
                lambda: per_unit(bench.project_round()),
                lambda: per_unit(bench.baseline_round()),
                repeats,
                log=say,
            )
            detail: dict[str, Any] = {
                "devices": shape.devices,
                "messages_per_device": shape.messages,
                "records_per_message": shape.records,
                "records_per_round": shape.total_records,
                "records_per_second_target": RECORDS_PER_SECOND_TARGET,
                "warmup_rate": round(warm.value, 1),
            }
            if profile_dir is not None:
                say("  profiling one more project round (cProfile of the dispatcher)")
                detail["profile"] = bench.profile_round(profile_dir, name)
        finally:
            bench.stop()
    result = BenchResult(
        name=name, unit=unit, target_ratio=TARGET_RATIO, project_runs=project_runs,
        baseline_runs=baseline_runs, description=description, detail=detail,
        # Batched: the budget is the absolute figure (the bare subscriber
        # only counts 1,000-record messages); per message it is the 0.8 ratio.
        target_value=float(RECORDS_PER_SECOND_TARGET) if unit == UNIT else None,
    )  # fmt: skip
    _add_notes(result, shape, divisor)
    return result


def _add_notes(result: BenchResult, shape: Shape, divisor: int) -> None:
    """The shape, the budget that applies, the message rates and the CPU per round."""
    records_per_second = result.project * divisor
    budget = (
        f"target: at least {RECORDS_PER_SECOND_TARGET:,} records/s "
        f"({'met' if result.met else 'NOT met'}: {records_per_second:,.0f})"
        if result.target_value is not None
        else f"target: {TARGET_RATIO:g} of the bare message rate ({result.ratio:.3f})"
    )
    result.notes.append(
        f"{shape.devices} devices x {shape.messages} messages x {shape.records} records "
        f"per round; {budget}"
    )
    result.notes.append(
        f"messages/s: project {records_per_second / shape.records:,.1f}, "
        f"baseline {result.baseline * divisor / shape.records:,.1f} (the ratio is the same)"
    )
    hub_cpu = median_detail(result.project_runs, "hub_cpu_seconds")
    bare_cpu = median_detail(result.baseline_runs, "bare_cpu_seconds")
    hub_wall = median_detail(result.project_runs, "seconds")
    bare_wall = median_detail(result.baseline_runs, "seconds")
    if None in (hub_cpu, bare_cpu, hub_wall, bare_wall):
        return
    assert hub_cpu is not None and bare_cpu is not None  # for mypy
    assert hub_wall is not None and bare_wall is not None
    paced = hub_wall > 1.2 * hub_cpu and bare_wall > 1.2 * bare_cpu
    result.notes.append(
        f"per round (medians): hub process {hub_cpu:.3f} CPU-s in {hub_wall:.3f} s, bare "
        f"subscriber {bare_cpu:.3f} CPU-s in {bare_wall:.3f} s"
        + ("; both receivers had CPU to spare: the devices' publishing paced both" if paced else "")
    )


def median_detail(runs: list[Sample], key: str) -> float | None:
    """The median of one numeric ``detail`` field over ``runs`` (``None`` if absent)."""
    values = [float(run.detail[key]) for run in runs if key in run.detail]
    return median(values) if values else None
