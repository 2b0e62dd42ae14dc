"""Run every benchmark, print the summary, write ``results.json`` and ``results.md``.

Each benchmark module exposes ``NAME`` and ``run(quick=, repeats=, profile_dir=, say=)``
returning a :class:`bench.harness.BenchResult`; every module of the ``bench`` package
that does is found by :func:`discover` (sorted by name), so a new benchmark is one file.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from bench import harness, manifest_fanout

BENCH_DIR = Path(__file__).resolve().parent


class Benchmark(Protocol):
    """What a benchmark module provides."""

    NAME: str

    def run(
        self, *, quick: bool, repeats: int, profile_dir: Path | None, say: Callable[[str], None]
    ) -> harness.BenchResult: ...


def discover() -> tuple[Benchmark, ...]:
    """Every module of the ``bench`` package that defines ``NAME`` and ``run``."""
    found: list[Benchmark] = []
    for info in sorted(pkgutil.iter_modules([str(BENCH_DIR)]), key=lambda i: i.name):
        if info.name.startswith("_") or info.name in _NOT_BENCHMARKS:
            continue
        module = importlib.import_module(f"bench.{info.name}")
        is_benchmark = isinstance(getattr(module, "NAME", None), str)
        if is_benchmark and callable(getattr(module, "run", None)):
            found.append(module)  # type: ignore[arg-type]
    return tuple(found)


_NOT_BENCHMARKS = frozenset({"main", "harness"})
BENCHMARKS: tuple[Benchmark, ...] = discover()


def _say(text: str) -> None:
    print(text, flush=True)


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the selected benchmarks, write the result files."""
    parser = argparse.ArgumentParser(prog="bench/run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller sizes (about 2 minutes)")
    parser.add_argument(
        "--repeats",
        type=int,
        default=harness.MIN_REPEATS,
        help=f"runs of project and baseline each (default and minimum {harness.MIN_REPEATS})",
    )
    parser.add_argument(
        "--only", action="append", metavar="NAME", help="run only this benchmark (repeatable)"
    )
    parser.add_argument(
        "--profile", type=Path, metavar="DIR", help="add one cProfile'd project round per benchmark"
    )
    parser.add_argument(
        "--out", type=Path, default=BENCH_DIR, help="where results.json/results.md go"
    )
    args = parser.parse_args(argv)
    if args.repeats < harness.MIN_REPEATS:
        parser.error(f"--repeats must be at least {harness.MIN_REPEATS} (medians of >= 3 runs)")
    selected = [b for b in BENCHMARKS if not args.only or b.NAME in args.only]
    if not selected:
        parser.error(f"no benchmark named {args.only}; known: {[b.NAME for b in BENCHMARKS]}")
    mode = "quick" if args.quick else "full"
    machine = harness.machine_info()
    versions = harness.versions(manifest_fanout.mosquitto_binary())
    _say(f"bench ({mode}): {machine['nproc']} CPUs, {machine['cpu_model']}")
    results = []
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    failed: list[str] = []
    for bench in selected:
        _say(f"{bench.NAME}:")
        started = time.monotonic()
        try:
            result = bench.run(
                quick=args.quick, repeats=args.repeats, profile_dir=args.profile, say=_say
            )
        except Exception as exc:
            _say(f"{bench.NAME}: FAILED: {exc!r}")
            failed.append(bench.NAME)
            continue
        result.measured_at, result.mode = stamp, mode
        results.append(result)
        _say(
            f"{bench.NAME}: project {result.project:,.1f} {result.unit}, baseline "
            f"{result.baseline:,.1f} {result.unit}, ratio {result.ratio:.3f} "
            f"(target {result.target_text}: {'met' if result.met else 'NOT met'}) "
            f"[{time.monotonic() - started:.0f}s]"
        )
    try:
        previous = harness.read_json(args.out / "results.json")
    except ValueError as exc:
        _say(f"ignoring the old results.json ({exc})")
        previous = []
    merged = harness.merge(previous, results)
    fresh = {r.name for r in results}
    kept = [r.name for r in merged if r.name not in fresh]
    if kept:
        _say(f"kept earlier figures of: {', '.join(kept)}")
    harness.write_json(args.out / "results.json", merged)
    harness.write_markdown(
        args.out / "results.md",
        merged,
        machine=machine,
        versions=versions,
        mode=mode,
        sections=harness.read_sections(BENCH_DIR / "sections"),
    )
    _say(f"wrote {args.out / 'results.json'} and {args.out / 'results.md'}")
    if failed:
        _say(f"FAILED: {', '.join(failed)} (their earlier figures, if any, were kept)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
