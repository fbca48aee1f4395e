"""The soak runs end to end: ``python -m benchmarks soak`` for half a minute.

Like the benchmarks, the soak's load comes from Node processes: without ``node`` and ``npm``
the test is skipped (it says why); with them, it installs the locked packages itself when they
are missing, and fails if it cannot. Half a minute is too short to judge a trend, so the test
checks what a user looks at, not the verdicts themselves: the report is there, every process
was sampled, the load flowed, and each series has a verdict.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.test_bench_smoke import _node_packages
from tests.support.processes import REPO

PROCESSES = ("daphne", "bridge", "mosquitto", "redis")


@pytest.mark.timeout(150)
def test_a_short_soak_samples_every_process_and_delivers(tmp_path: Path) -> None:
    _node_packages()
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks", "soak", "--minutes", "0.5", "--out", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=140,
        check=False,
    )
    # 0: every series flat, 1: one grows (likely in half a minute); anything else is a failure.
    assert result.returncode in {0, 1}, result.stdout[-3000:] + result.stderr[-3000:]

    for name in ("soak.json", "soak.md", "soak.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    soak = json.loads((tmp_path / "soak.json").read_text())
    assert soak["minutes"] == 0.5
    samples = soak["samples"]
    assert len(samples) >= 5
    for process in PROCESSES:
        rss = [s[f"{process}_rss_mib"] for s in samples]
        fds = [s[f"{process}_fds"] for s in samples]
        assert all(v is not None and v > 0 for v in rss), process
        assert all(v is not None and v > 0 for v in fds), process
    assert all(s["redis_used_memory_mib"] > 0 and s["redis_keys"] > 0 for s in samples)

    totals = soak["totals"]
    assert totals["device_sent"] > 0
    assert totals["uplink_sent"] > 0
    assert totals["delivered"] > 0
    assert totals["delivered"] >= 0.99 * totals["expected"], totals
    assert totals["uplink_delivered"] >= 0.99 * totals["uplink_expected"], totals
    assert totals["reconnects"] > 0
    assert totals["resumed"] > 0
    assert samples[-1]["totals"]["delivered"] == totals["delivered"]

    verdicts = {v["series"]: v for v in soak["verdicts"]}
    assert {"daphne_rss_mib", "daphne_fds", "redis_used_memory_net_mib"} <= set(verdicts)
    for series, verdict in verdicts.items():
        assert verdict["verdict"] in {"flat", "grows"}, (series, verdict)
        assert "trend_per_hour" in verdict, series
    grows = any(v["verdict"] == "grows" for v in verdicts.values())
    assert result.returncode == (1 if grows else 0)
    report = (tmp_path / "soak.md").read_text()
    assert "| daphne RSS (MiB) |" in report
    assert "Verdict: **" in report
