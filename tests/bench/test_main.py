"""``bench/run``: merging results by name, surviving a failing benchmark (nothing timed here)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest

from bench import harness, main
from bench.harness import BenchResult, Sample


def result(name: str, project: float = 10.0) -> BenchResult:
    return BenchResult(
        name=name,
        unit="ops/s",
        target_ratio=0.5,
        project_runs=[Sample(project, {"k": 1}), Sample(project), Sample(project)],
        baseline_runs=[Sample(20.0), Sample(20.0), Sample(20.0)],
        description="what it measures",
        notes=["a note"],
    )


def fake(name: str, value: float | None) -> SimpleNamespace:
    def run(
        *, quick: bool, repeats: int, profile_dir: Path | None, say: Callable[[str], None]
    ) -> BenchResult:
        if value is None:
            raise RuntimeError("broker would not start")
        return result(name, value)

    return SimpleNamespace(NAME=name, run=run)


def test_from_json_round_trips_every_field() -> None:
    original = result("a")
    original.measured_at, original.mode = "2026-01-01 00:00 UTC", "quick"
    again = BenchResult.from_json(json.loads(json.dumps(original.to_json())))
    assert again.to_json() == original.to_json()
    assert (again.project, again.baseline, again.ratio) == (10.0, 20.0, 0.5)


def test_from_json_refuses_a_foreign_entry() -> None:
    with pytest.raises(ValueError):
        BenchResult.from_json({"name": "x"})


def test_merge_replaces_by_name_and_keeps_the_rest() -> None:
    merged = harness.merge([result("b", 1.0), result("a", 1.0)], [result("b", 7.0)])
    assert [(r.name, r.project) for r in merged] == [("a", 1.0), ("b", 7.0)]


def test_only_one_benchmark_keeps_the_other_entries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(main, "BENCHMARKS", (fake("alpha", 5.0), fake("beta", 6.0)))
    assert main.main(["--out", str(tmp_path)]) == 0
    assert main.main(["--out", str(tmp_path), "--only", "beta"]) == 0
    monkeypatch.setattr(main, "BENCHMARKS", (fake("alpha", 5.0), fake("beta", 9.0)))
    assert main.main(["--out", str(tmp_path), "--only", "beta"]) == 0
    entries = json.loads((tmp_path / "results.json").read_text())
    assert [(e["name"], e["project"]) for e in entries] == [("alpha", 5.0), ("beta", 9.0)]
    for entry in entries:
        assert {"name", "unit", "project", "baseline", "ratio", "target_ratio"} <= set(entry)
    text = (tmp_path / "results.md").read_text()
    assert "| alpha |" in text and "| beta |" in text


def test_a_failing_benchmark_is_reported_and_the_others_still_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(main, "BENCHMARKS", (fake("alpha", None), fake("beta", 6.0)))
    assert main.main(["--out", str(tmp_path)]) == 1
    entries = json.loads((tmp_path / "results.json").read_text())
    assert [e["name"] for e in entries] == ["beta"]


def test_sections_are_appended_to_results_md(tmp_path: Path) -> None:
    folder = tmp_path / "sections"
    folder.mkdir()
    (folder / "b.md").write_text("## Second\n\ntext b\n")
    (folder / "a.md").write_text("## First\n\ntext a\n")
    text = harness.render_markdown(
        [result("x")],
        machine={"nproc": 2},
        versions={},
        mode="full",
        sections=harness.read_sections(folder),
    )
    assert text.index("## First") < text.index("## Second")
    assert text.rstrip().endswith("text b")
    assert harness.read_sections(tmp_path / "missing") == []
