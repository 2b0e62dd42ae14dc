"""``fleet-sim run`` end to end: a real hub process, real brokers, real agents, real faults.

A short scenario (20 devices, 30 s; a hub SIGKILL and restart, agent crashes, a
flaky group, one device trying every attack) runs on the embedded broker and,
where this machine has them, on Mosquitto and PostgreSQL. The report must show
every fault and attack carried out and no invariant violated. A fleet whose
clocks run a lease ahead cannot converge: the CLI must say so and exit 1.
"""

from __future__ import annotations

import json
import traceback
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from simulator.cli import app
from tests.backends import mosquitto_binary, postgres_url
from tests.support.pg import fresh_schema

pytestmark = pytest.mark.e2e

HERE = Path(__file__).parent


def _backends() -> list[tuple[str, str]]:
    found = [("embedded", "sqlite")]
    if mosquitto_binary() or postgres_url():
        found.append(
            (
                "mosquitto" if mosquitto_binary() else "embedded",
                "postgresql" if postgres_url() else "sqlite",
            )
        )
    return found


@pytest.fixture(params=_backends(), ids=lambda b: f"{b[0]}+{b[1]}")
def backend_args(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[list[str]]:
    broker, database = request.param
    if broker == "mosquitto":
        monkeypatch.setenv("FLEET_SIM_MOSQUITTO", str(mosquitto_binary()))
    args = ["--broker", broker]
    if database == "postgresql":
        base = postgres_url()
        assert base is not None
        with fresh_schema(base) as url:
            yield [*args, "--database-url", url]
    else:
        yield args


def _run(args: list[str], report: Path) -> tuple[int, dict[str, object], str]:
    result = CliRunner().invoke(app, ["run", *args, "--report", str(report), "--quiet"])
    data = json.loads(report.read_text()) if report.exists() else {}
    output = result.output
    if result.exc_info is not None and not isinstance(result.exception, SystemExit):
        output += "".join(traceback.format_exception(*result.exc_info))
    return result.exit_code, data, output


def _run_faults(args: list[str], tmp_path: Path) -> tuple[int, dict[str, object], str]:
    """The fault scenario; run again once if the first run could not even finish.

    Exit status 2 means the run never got to the checker (the environment failed,
    e.g. a restarted broker's port still held under a loaded CI machine); it is
    reported and retried once. A violated invariant (exit 1) is never retried.
    """
    code, report, output = _run(args, tmp_path / "report.json")
    if code == 2 and not report:
        warnings.warn(f"fleet-sim run could not finish, retried once:\n{output}", stacklevel=2)
        code, report, output = _run(args, tmp_path / "report-retry.json")
    return code, report, output


def test_short_run_with_faults_keeps_every_invariant(
    backend_args: list[str], tmp_path: Path
) -> None:
    code, report, output = _run_faults(
        ["--scenario", str(HERE / "faults.toml"), *backend_args], tmp_path
    )
    assert report, output
    assert report["violations"] == [], output
    assert code == 0, output
    assert report["devices"] == 20
    assert report["manifests"] == {"converged": 20, "total": 20}
    faults = {f["kind"]: f for f in report["faults"]}  # type: ignore[union-attr]
    assert set(faults) == {"agent_crash", "hub_kill"}
    assert not any("skipped" in f for f in report["faults"])  # type: ignore[union-attr]
    groups = report["groups"]
    assert sum(g["crashes"] for g in groups.values()) >= 2  # type: ignore[union-attr]
    assert groups["flaky"]["connection_losses"] > 0  # type: ignore[index]
    attacks = report["attacks"]
    for name in ("replay_manifest", "foreign_usage", "probe_topics", "oversize", "malformed"):
        assert attacks.get(name) == 1, attacks  # type: ignore[union-attr]
    usage = report["usage"]
    assert usage["sent"] > 0 and usage["acknowledged"] > 0, usage  # type: ignore[index]
    assert (usage["lost"], usage["duplicated"], usage["unexpected"]) == (0, 0, 0)  # type: ignore[index]
    assert report["hub_exit_status"] == 0


def test_a_violated_invariant_fails_the_run(tmp_path: Path) -> None:
    code, report, output = _run(
        ["--scenario", str(HERE / "broken_clock.toml")], tmp_path / "report.json"
    )
    assert code == 1, output
    kinds = {v["kind"] for v in report["violations"]}  # type: ignore[union-attr]
    assert kinds == {"stale_manifest"}, report["violations"]
    assert report["manifests"]["converged"] == 0  # type: ignore[index]
