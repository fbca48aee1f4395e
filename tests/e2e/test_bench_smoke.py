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
from typing import Any

import pytest

from benchmarks.scenarios import QUICK
from tests.support.processes import REPO

BENCHMARKS = REPO / "benchmarks"
ROOM = QUICK.fanout_sizes[0]  # --quick: one room, of 10 browsers
# Processes whose CPU a step measures: the system's own, and the harness's.
SYSTEM_ROLES = {
    "mosquitto": {"mosquitto"},
    "gateway": {"server", "bridge", "redis", "mosquitto"},
}
HARNESS_ROLES = {"load", "receivers", "controller"}


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


def quick_run(out: Path, *args: str) -> dict[str, Any]:
    """``python -m benchmarks --quick`` with ``args``, writing to ``out``; its results."""
    _node_packages()
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", *args, "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=200,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    results: dict[str, Any] = json.loads((out / "results.json").read_text())
    return results


@pytest.mark.timeout(240)
def test_quick_run_measures_deliveries(tmp_path: Path) -> None:
    results = quick_run(tmp_path, "--systems", "mosquitto,gateway", "--scenarios", "fanout")
    runs = {run["system"]: run for run in results["runs"]}
    assert set(runs) == {"mosquitto", "gateway"}
    for system, run in runs.items():
        assert run["status"] == "ok", (system, run["error"])
        assert (run["scenario"], run["group"]) == ("fanout", f"room of {ROOM}")
        # Every step of the quick ramp ran (each is long enough to count).
        assert [step["offered"] for step in run["steps"]] == list(QUICK.fanout_deliveries)
        for step in run["steps"]:
            assert step["sent"] > 0, (system, step)
            assert step["expected"] == step["sent"] * ROOM, (system, step)
            assert step["delivered"] > 0, (system, step)
            assert step["ratio"] == round(min(1.0, step["delivered"] / step["expected"]), 5)
            assert 0 < step["p50_ms"] <= step["p99_ms"] <= step["max_ms"], (system, step)
            # CPU is measured for the system's processes and the harness's own.
            assert set(step["cpu_s"]) == SYSTEM_ROLES[system] | HARNESS_ROLES, (system, step)
            # Node processes that sent or counted a thousand messages or more used CPU.
            assert step["cpu_s"]["load"] > 0, (system, step)
            assert step["cpu_s"]["receivers"] > 0, (system, step)
        # A quiet broker may use less than a clock tick in one step, not in the whole run.
        assert sum(s["cpu_s"][r] for s in run["steps"] for r in SYSTEM_ROLES[system]) > 0, system

    report = (tmp_path / "report.md").read_text()
    assert f"### room of {ROOM}\n" in report
    assert "| offered deliveries/s | mosquitto | gateway |" in report
    for offered in QUICK.fanout_deliveries:
        assert f"\n| {offered:,} | " in report, f"no row for {offered}/s in the report"
    plot = f"fanout-room-of-{ROOM}.png"
    assert f"]({plot})" in report
    assert (tmp_path / plot).stat().st_size > 0


@pytest.mark.timeout(240)
def test_a_join_storm_costs_each_socket_a_few_frames_not_one_per_newcomer(tmp_path: Path) -> None:
    """150 sockets joining one room: one presence frame per join would be 75 a socket on
    average; gathered presence is a frame per interval the storm lasts."""
    sockets = 150
    results = quick_run(
        tmp_path, "--systems", "gateway", "--scenarios", "join", "--plan", f"join_count={sockets}"
    )
    (run,) = results["runs"]
    assert run["status"] == "ok", run["error"]
    joined = run["join"]
    assert joined["sockets"] == sockets
    assert 1 <= joined["frames_per_socket"] < sockets / 5  # the welcome, then a few
    assert joined["frames_per_socket"] == round(joined["frames"] / sockets, 1)
    assert joined["server_kb_per_socket"] > 0
    report = (tmp_path / "report.md").read_text()
    assert "Join storm" in report
    plot = f"join-{sockets}-sockets.png"  # beside any other system in the run
    assert f"]({plot})" in report
    assert (tmp_path / plot).stat().st_size > 0


@pytest.mark.timeout(240)
def test_a_reconnect_storm_brings_every_socket_back_with_what_it_missed(tmp_path: Path) -> None:
    """The server restarts under 100 browsers in two rooms: each comes back by itself, as the
    room page does, and its resumed welcome replays the message sent while the server was
    down. Mosquitto is restarted under its own clients beside it (nothing to resume there)."""
    sockets = 100
    results = quick_run(
        tmp_path,
        *("--systems", "naive,mosquitto,gateway", "--scenarios", "reconnect"),
        *("--plan", f"reconnect_count={sockets}"),
    )
    runs = {run["system"]: run for run in results["runs"]}
    assert set(runs) == {"mosquitto", "gateway"}  # the naive stack has no restart here
    for system, run in runs.items():
        assert run["status"] == "ok", (system, run["error"])
        back = run["reconnect"]
        assert back["closed"] == back["back"] == sockets, (system, back)
        assert back["given_up"] == back["still_away"] == 0
        assert back["refused_attempts"] > 0  # they tried while the server was down
        assert 0 < back["handshake_p50_ms"] <= back["handshake_p99_ms"]
        assert back["all_back_seconds"] > 0
    gateway = runs["gateway"]["reconnect"]
    # Two rooms of 50: the one message each room got during the downtime, once per socket.
    assert gateway["replayed"] == gateway["replay_expected"] == sockets
    assert gateway["gaps"] == 0
    assert runs["mosquitto"]["reconnect"]["replayed"] is None
    assert "Reconnect storm" in (tmp_path / "report.md").read_text()
