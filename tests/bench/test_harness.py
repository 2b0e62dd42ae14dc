"""The benchmark harness's arithmetic and files (nothing here is timed)."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bench.harness import (
    BenchResult,
    Sample,
    interleave,
    machine_info,
    median,
    rate,
    ratio,
    render_markdown,
    write_json,
    write_markdown,
)

MACHINE = {"nproc": 2, "memory_mib": 24105, "cpu_model": "Test CPU", "os": "Linux"}
VERSIONS = {"python": "3.11.7", "paho-mqtt": "2.2.0", "mosquitto": "2.0.11"}


def result(**overrides: object) -> BenchResult:
    fields: dict[str, object] = {
        "name": "fanout",
        "unit": "devices/s",
        "target_ratio": 0.5,
        "project_runs": [Sample(300.0, {"total_s": 3.3}), Sample(100.0), Sample(200.0)],
        "baseline_runs": [Sample(1000.0), Sample(900.0), Sample(800.0)],
    }
    fields.update(overrides)
    return BenchResult(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("values", "expected"),
    [([3.0], 3.0), ([3.0, 1.0, 2.0], 2.0), ([4.0, 1.0, 3.0, 2.0], 2.5), ([5, 5, 1], 5.0)],
)
def test_median(values: list[float], expected: float) -> None:
    assert median(values) == expected


@pytest.mark.parametrize("values", [[], [1.0, math.nan], [math.inf, 1.0, 2.0]])
def test_median_refuses_nothing_and_non_finite(values: list[float]) -> None:
    with pytest.raises(ValueError):
        median(values)


def test_ratio_of_rates_and_of_durations() -> None:
    assert ratio(250.0, 1000.0) == 0.25
    # Durations: lower is better, so the baseline is divided by the project.
    assert ratio(4.0, 1.0, higher_is_better=False) == 0.25
    assert ratio(1.0, 1.0) == 1.0


@pytest.mark.parametrize(("project", "baseline"), [(1.0, 0.0), (1.0, -2.0), (math.nan, 1.0)])
def test_ratio_refuses_meaningless_divisions(project: float, baseline: float) -> None:
    with pytest.raises(ValueError):
        ratio(project, baseline)


def test_rate() -> None:
    assert rate(10_000, 4.0) == 2500.0
    with pytest.raises(ValueError):
        rate(1, 0.0)


def test_result_uses_medians_of_each_side() -> None:
    r = result()
    assert r.project == 200.0
    assert r.baseline == 900.0
    assert r.ratio == pytest.approx(200 / 900)
    assert not r.met
    assert result(target_ratio=0.2).met


def test_interleave_alternates_baseline_first() -> None:
    calls: list[str] = []

    def project() -> Sample:
        calls.append("p")
        return Sample(float(len(calls)))

    def baseline() -> Sample:
        calls.append("b")
        return Sample(float(len(calls)))

    project_runs, baseline_runs = interleave(project, baseline, 3, log=lambda _text: None)
    assert calls == ["b", "p", "b", "p", "b", "p"]
    assert [s.value for s in baseline_runs] == [1.0, 3.0, 5.0]
    assert [s.value for s in project_runs] == [2.0, 4.0, 6.0]
    with pytest.raises(ValueError):
        interleave(project, baseline, 0)


def test_an_absolute_target_decides_met_and_reads_back(tmp_path: Path) -> None:
    below, above = result(target_value=250.0), result(target_value=150.0)
    assert below.ratio == above.ratio  # the ratio is only information then
    assert not below.met and above.met
    assert result(target_value=150.0, target_ratio=0.9).met  # the ratio no longer decides
    path = tmp_path / "results.json"
    write_json(path, [above])
    (entry,) = json.loads(path.read_text())
    assert entry["target_value"] == 150.0 and entry["met"] is True
    again = BenchResult.from_json(entry)
    assert again.target_value == 150.0 and again.met
    text = render_markdown([below], machine=MACHINE, versions=VERSIONS, mode="full")
    summary = next(line for line in text.splitlines() if line.startswith("| fanout |"))
    assert summary == "| fanout | devices/s | 200.0 | 900.0 | 0.222 | ≥ 250 devices/s | NO | 3 |"


def test_json_entries_carry_the_required_fields(tmp_path: Path) -> None:
    path = tmp_path / "out" / "results.json"
    write_json(path, [result(detail={"devices": 10})])
    (entry,) = json.loads(path.read_text())
    assert {"name", "unit", "project", "baseline", "ratio", "target_ratio", "runs"} <= set(entry)
    assert entry["name"] == "fanout"
    assert entry["unit"] == "devices/s"
    assert entry["project"] == 200.0
    assert entry["baseline"] == 900.0
    assert entry["ratio"] == round(200 / 900, 4)
    assert entry["target_ratio"] == 0.5
    assert [(run["project"], run["baseline"]) for run in entry["runs"]] == [
        (300.0, 1000.0),
        (100.0, 900.0),
        (200.0, 800.0),
    ]
    assert entry["runs"][0]["project_detail"] == {"total_s": 3.3}
    assert entry["detail"] == {"devices": 10}
    assert not list(path.parent.glob("*.tmp"))


def test_json_refuses_unequal_run_counts(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        write_json(tmp_path / "r.json", [result(baseline_runs=[Sample(1.0)])])


def test_markdown_has_machine_versions_medians_and_ratios(tmp_path: Path) -> None:
    when = datetime(2030, 1, 2, 3, 4, tzinfo=UTC)
    text = render_markdown(
        [result(notes=["a note"])], machine=MACHINE, versions=VERSIONS, mode="full", when=when
    )
    assert "2030-01-02 03:04 UTC" in text
    for expected in ("nproc: 2", "24,105 MiB", "Test CPU", "paho-mqtt: 2.2.0", "mosquitto: 2.0.11"):
        assert expected in text
    summary = next(line for line in text.splitlines() if line.startswith("| fanout |"))
    assert summary == "| fanout | devices/s | 200.0 | 900.0 | 0.222 | 0.5 | NO | 3 |"
    assert "| 1 | 300.0 | 1,000.0 | 0.300 |" in text
    assert "- a note" in text
    path = tmp_path / "results.md"
    write_markdown(path, [result()], machine=MACHINE, versions=VERSIONS, mode="quick", when=when)
    assert "bench/run --quick" in path.read_text()


def test_machine_info_is_filled_on_linux() -> None:
    info = machine_info()
    assert isinstance(info["nproc"], int) and info["nproc"] >= 1
    assert info["cpu_model"]
