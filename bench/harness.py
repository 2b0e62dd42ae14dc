"""The benchmark harness: repeated runs, medians, ratios, machine facts, result files.

Every benchmark measures the project and a bare baseline in the same run,
interleaved (baseline, project, baseline, project, ...) so that drift of the
machine hits both alike, and reports the median of each. The ratio is
``project / baseline`` for rates (higher is better) and ``baseline / project``
for durations (lower is better), so in both cases a ratio at or above
``target_ratio`` means the budget is met. A benchmark whose issue sets an
absolute figure instead (batched usage ingestion: 50,000 records/s) carries it
as ``target_value``; then the project's median must reach that figure, and the
ratio is reported for information.

Nothing here times anything by itself beyond :func:`interleave`: the
benchmarks measure, the harness does the arithmetic and the files.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import statistics
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

MIN_REPEATS = 3

Measure = Callable[[], "Sample"]


@dataclass(frozen=True, slots=True)
class Sample:
    """One measurement: the value in the benchmark's unit, and what else was seen."""

    value: float
    detail: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class BenchResult:
    """All runs of one benchmark, and the figures derived from them."""

    name: str
    unit: str
    target_ratio: float
    project_runs: list[Sample]
    baseline_runs: list[Sample]
    higher_is_better: bool = True
    description: str = ""
    notes: list[str] = field(default_factory=list)
    detail: dict[str, Any] = field(default_factory=dict)
    measured_at: str = ""
    mode: str = ""
    target_value: float | None = None

    @property
    def project(self) -> float:
        """Median of the project's runs."""
        return median([s.value for s in self.project_runs])

    @property
    def baseline(self) -> float:
        """Median of the baseline's runs."""
        return median([s.value for s in self.baseline_runs])

    @property
    def ratio(self) -> float:
        """The project's median against the baseline's, oriented so higher is better."""
        return ratio(self.project, self.baseline, higher_is_better=self.higher_is_better)

    @property
    def met(self) -> bool:
        """Whether the budget is met: ``target_value`` when set, else ``target_ratio``."""
        if self.target_value is not None:
            return self.project >= self.target_value
        return self.ratio >= self.target_ratio

    @property
    def target_text(self) -> str:
        """The budget as the summary shows it."""
        if self.target_value is not None:
            return f"≥ {self.target_value:,.0f} {self.unit}"
        return f"{self.target_ratio:g}"

    def to_json(self) -> dict[str, Any]:
        """The ``results.json`` entry."""
        return {
            "name": self.name,
            "unit": self.unit,
            "project": _round(self.project),
            "baseline": _round(self.baseline),
            "ratio": _round(self.ratio, 4),
            "target_ratio": self.target_ratio,
            "target_value": self.target_value,
            "met": self.met,
            "higher_is_better": self.higher_is_better,
            "runs": [
                {
                    "project": _round(p.value),
                    "baseline": _round(b.value),
                    "project_detail": dict(p.detail),
                    "baseline_detail": dict(b.detail),
                }
                for p, b in zip(self.project_runs, self.baseline_runs, strict=True)
            ],
            "detail": self.detail,
            "description": self.description,
            "notes": list(self.notes),
            "measured_at": self.measured_at,
            "mode": self.mode,
        }

    @classmethod
    def from_json(cls, entry: Mapping[str, Any]) -> BenchResult:
        """Rebuild a result from its ``results.json`` entry (for merging runs).

        Raises:
            ValueError: the entry lacks a field every entry has.
        """
        try:
            runs = entry["runs"]
            return cls(
                name=str(entry["name"]),
                unit=str(entry["unit"]),
                target_ratio=float(entry["target_ratio"]),
                project_runs=[
                    Sample(float(r["project"]), r.get("project_detail", {})) for r in runs
                ],
                baseline_runs=[
                    Sample(float(r["baseline"]), r.get("baseline_detail", {})) for r in runs
                ],
                higher_is_better=bool(entry.get("higher_is_better", True)),
                description=str(entry.get("description", "")),
                notes=[str(n) for n in entry.get("notes", [])],
                detail=dict(entry.get("detail", {})),
                measured_at=str(entry.get("measured_at", "")),
                mode=str(entry.get("mode", "")),
                target_value=(
                    None if entry.get("target_value") is None else float(entry["target_value"])
                ),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a results.json entry: {exc}") from exc


def median(values: Sequence[float]) -> float:
    """The median of ``values``.

    Raises:
        ValueError: for no values, or a value that is not a finite number.
    """
    if not values:
        raise ValueError("median of no values")
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"non-finite value among {list(values)!r}")
    return float(statistics.median(values))


def ratio(project: float, baseline: float, *, higher_is_better: bool = True) -> float:
    """``project / baseline`` for rates, ``baseline / project`` for durations.

    Raises:
        ValueError: when the divisor is not a positive finite number.
    """
    numerator, divisor = (project, baseline) if higher_is_better else (baseline, project)
    if not (math.isfinite(divisor) and divisor > 0) or not math.isfinite(numerator):
        raise ValueError(f"cannot form a ratio of {project!r} to {baseline!r}")
    return numerator / divisor


def rate(count: int, seconds: float) -> float:
    """Events per second.

    Raises:
        ValueError: for a non-positive duration.
    """
    if seconds <= 0:
        raise ValueError(f"non-positive duration {seconds!r}")
    return count / seconds


def interleave(
    project: Measure, baseline: Measure, repeats: int, *, log: Callable[[str], None] = print
) -> tuple[list[Sample], list[Sample]]:
    """Run baseline and project alternately ``repeats`` times each (baseline first)."""
    if repeats < 1:
        raise ValueError("repeats must be at least 1")
    project_runs: list[Sample] = []
    baseline_runs: list[Sample] = []
    for index in range(1, repeats + 1):
        b = baseline()
        log(f"  run {index}/{repeats}: baseline {b.value:,.1f}")
        p = project()
        log(f"  run {index}/{repeats}: project  {p.value:,.1f}")
        baseline_runs.append(b)
        project_runs.append(p)
    return project_runs, baseline_runs


# ------------------------------------------------------------------ machine


def machine_info() -> dict[str, Any]:
    """nproc, memory and CPU model of this machine, plus OS and kernel."""
    return {
        "nproc": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "memory_mib": _memory_mib(),
        "cpu_model": _cpu_model(),
        "os": platform.platform(),
    }


def _memory_mib() -> int | None:
    try:
        text = Path("/proc/meminfo").read_text()
    except OSError:
        return None
    match = re.search(r"^MemTotal:\s+(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) // 1024 if match else None


def _cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown"
    match = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    return match.group(1).strip() if match else (platform.processor() or "unknown")


def package_version(name: str) -> str:
    """An installed distribution's version, or ``"not installed"``."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def mosquitto_version(binary: str) -> str:
    """What ``mosquitto -h`` reports, or ``"unavailable"``."""
    try:
        result = subprocess.run(
            [binary, "-h"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unavailable"
    match = re.search(r"mosquitto version (\S+)", result.stdout + result.stderr)
    return match.group(1) if match else "unavailable"


def versions(mosquitto_binary: str) -> dict[str, str]:
    """Versions of everything the figures depend on."""
    return {
        "python": platform.python_version(),
        "paho-mqtt": package_version("paho-mqtt"),
        "aiomqtt": package_version("aiomqtt"),
        "mosquitto": mosquitto_version(mosquitto_binary),
        "amqtt": package_version("amqtt"),
        "sqlalchemy": package_version("sqlalchemy"),
        "cryptography": package_version("cryptography"),
        "sqlite": _sqlite_version(),
    }


def _sqlite_version() -> str:
    import sqlite3  # noqa: PLC0415 - only for the version string

    return sqlite3.sqlite_version


# ------------------------------------------------------------------ files


def merge(previous: Sequence[BenchResult], fresh: Sequence[BenchResult]) -> list[BenchResult]:
    """``previous`` with every entry ``fresh`` has a name for replaced, sorted by name.

    So ``bench/run --only X`` refreshes X and keeps the figures of the others.
    """
    by_name = {r.name: r for r in previous}
    by_name.update({r.name: r for r in fresh})
    return [by_name[name] for name in sorted(by_name)]


def read_json(path: Path) -> list[BenchResult]:
    """The entries of an existing ``results.json`` (none if the file is absent).

    Raises:
        ValueError: the file is not a list of entries.
    """
    if not path.exists():
        return []
    data = json.loads(path.read_text())
    if not isinstance(data, list):
        raise ValueError(f"{path}: not a list of results")
    return [BenchResult.from_json(entry) for entry in data]


def read_sections(folder: Path) -> list[str]:
    """The Markdown files of ``folder`` (sorted by name), for :func:`render_markdown`."""
    if not folder.is_dir():
        return []
    return [p.read_text() for p in sorted(folder.glob("*.md"))]


def write_json(path: Path, results: Sequence[BenchResult]) -> None:
    """Write ``results.json``: a list of entries, one per benchmark."""
    _write_atomic(path, json.dumps([r.to_json() for r in results], indent=2) + "\n")


def render_markdown(
    results: Sequence[BenchResult],
    *,
    machine: Mapping[str, Any],
    versions: Mapping[str, str],
    mode: str,
    when: datetime | None = None,
    sections: Sequence[str] = (),
) -> str:
    """The ``results.md`` text: machine, versions, medians, ratios, every run.

    ``sections`` are Markdown texts appended as they are (measurements that do
    not fit the project-versus-baseline shape, such as the fleet simulator's
    scale figures, kept in ``bench/sections/*.md``).
    """
    when = when or datetime.now(UTC)
    lines = [
        "# Benchmark results",
        "",
        f"Generated by `bench/run{' --quick' if mode == 'quick' else ''}` "
        f"on {when.strftime('%Y-%m-%d %H:%M UTC')} ({mode} run). "
        "Project and baseline are measured in the same run, interleaved; figures are "
        "medians; ratio = project / baseline for rates (baseline / project for durations), "
        "so a ratio at or above the target meets the budget.",
        "",
        "## Machine",
        "",
        f"- nproc: {machine.get('nproc')}",
        f"- memory: {_fmt_mib(machine.get('memory_mib'))}",
        f"- CPU: {machine.get('cpu_model')}",
        f"- OS: {machine.get('os')}",
        "",
        "## Versions",
        "",
        *(f"- {name}: {version}" for name, version in versions.items()),
        "",
        "## Summary",
        "",
        "| benchmark | unit | project (median) | baseline (median) | ratio | target | met | runs |",
        "|---|---|---:|---:|---:|---:|:---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.name} | {r.unit} | {_fmt(r.project)} | {_fmt(r.baseline)} | "
            f"{r.ratio:.3f} | {r.target_text} | {'yes' if r.met else 'NO'} | "
            f"{len(r.project_runs)} |"
        )
    for r in results:
        lines += ["", f"## {r.name}", ""]
        if r.measured_at:
            lines += [f"Measured {r.measured_at} ({r.mode or 'full'} run).", ""]
        if r.description:
            lines += [r.description, ""]
        lines += ["| run | project | baseline | ratio |", "|---:|---:|---:|---:|"]
        for index, (p, b) in enumerate(zip(r.project_runs, r.baseline_runs, strict=True), 1):
            run_ratio = ratio(p.value, b.value, higher_is_better=r.higher_is_better)
            lines.append(f"| {index} | {_fmt(p.value)} | {_fmt(b.value)} | {run_ratio:.3f} |")
        if r.notes:
            lines += ["", *(f"- {note}" for note in r.notes)]
    for section in sections:
        lines += ["", section.strip()]
    return "\n".join(lines) + "\n"


def write_markdown(
    path: Path,
    results: Sequence[BenchResult],
    *,
    machine: Mapping[str, Any],
    versions: Mapping[str, str],
    mode: str,
    when: datetime | None = None,
    sections: Sequence[str] = (),
) -> None:
    """Write ``results.md`` (see :func:`render_markdown`)."""
    text = render_markdown(
        results, machine=machine, versions=versions, mode=mode, when=when, sections=sections
    )
    _write_atomic(path, text)


def _fmt(value: float) -> str:
    return f"{value:,.1f}" if abs(value) >= 10 else f"{value:,.3f}"


def _fmt_mib(value: Any) -> str:
    return f"{value:,} MiB" if isinstance(value, int) else "unknown"


def _round(value: float, digits: int = 2) -> float:
    return round(value, digits)


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
