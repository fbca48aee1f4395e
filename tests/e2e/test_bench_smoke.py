"""The benchmark harness runs end to end: ``python -m benchmarks --quick`` on two systems.

The harness's load and receive processes are Node scripts. Without ``node`` and ``npm`` the
test is skipped (it says why). With them, it installs the locked packages itself
(``npm ci`` in ``benchmarks/``, as ``make bench`` does) when they are missing, and fails
loudly if that is not possible: a harness that cannot run is a failure, not a skip.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.processes import REPO

BENCHMARKS = REPO / "benchmarks"


def _node_packages() -> None:
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are not installed: the benchmark harness needs Node 18+")
    if (BENCHMARKS / "node_modules" / "ws").is_dir() and (
        BENCHMARKS / "node_modules" / "mqtt"
    ).is_dir():
        return
    result = subprocess.run(
        ["npm", "ci", "--no-audit", "--no-fund"],
        cwd=BENCHMARKS,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, f"npm ci in benchmarks/ failed:\n{result.stderr[-3000:]}"


@pytest.mark.timeout(240)
def test_quick_run_measures_deliveries(tmp_path: Path) -> None:
    _node_packages()
    result = subprocess.run(
        [
            *(sys.executable, "-m", "benchmarks", "--quick"),
            *("--systems", "mosquitto,gateway", "--scenarios", "fanout"),
            *("--out", str(tmp_path)),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=200,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    results = json.loads((tmp_path / "results.json").read_text())
    runs = {run["system"]: run for run in results["runs"]}
    assert set(runs) == {"mosquitto", "gateway"}
    for system, run in runs.items():
        assert run["status"] == "ok", (system, run["error"])
        assert run["steps"], system
        for step in run["steps"]:
            assert step["delivered"] > 0, (system, step)
            assert 0.0 <= step["ratio"] <= 1.0, (system, step)
            assert step["p99_ms"] is not None
            assert step["p99_ms"] > 0
            assert step["cpu_s"]["receivers"] >= 0
    report = (tmp_path / "report.md").read_text()
    assert "room of 10" in report
    assert "mosquitto" in report
