"""``python -m benchmarks``: run the scenarios against the systems, then write the report.

python -m benchmarks                      # everything (about 25 minutes on 2 cores)
python -m benchmarks --quick              # a tiny subset, well under a minute
python -m benchmarks --systems mosquitto,gateway --scenarios fanout,uplink
python -m benchmarks report               # rewrite report.md and plots from results.json
python -m benchmarks soak --minutes 30    # the gateway under mixed load: does memory grow?
python -m benchmarks brokers              # the embedded broker beside Mosquitto and amqtt
python -m benchmarks report --out benchmarks/results/soak   # rewrite soak.md and soak.png
"""

import argparse
import asyncio
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.brokers import run_brokers
from benchmarks.harness import Run
from benchmarks.measure import background_cores
from benchmarks.nodeproc import HarnessError, node_binary
from benchmarks.report import write_report
from benchmarks.scenarios import FULL, QUICK, SCENARIOS, Plan, Scenario
from benchmarks.soak import rewrite_report, run_soak
from benchmarks.systems import DEFAULT_SYSTEMS, SYSTEM_NAMES, SystemFailed, make_system

HERE = Path(__file__).resolve().parent
RUN_TIMEOUT_SECONDS = 900.0  # the most one system may take in one scenario group
QUICK_SCENARIOS = ("fanout", "uplink")
QUIET_CORES = 0.25  # other processes may keep this much of the machine busy when a run starts


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "command", nargs="?", choices=["run", "report", "soak", "brokers"], default="run"
    )
    parser.add_argument("--quick", action="store_true", help="a tiny subset, for a smoke test")
    parser.add_argument("--systems", help=f"comma-separated, from: {', '.join(SYSTEM_NAMES)}")
    parser.add_argument("--scenarios", help=f"comma-separated, from: {', '.join(SCENARIOS)}")
    parser.add_argument("--out", type=Path, help="where results go (default benchmarks/results)")
    parser.add_argument("--step-seconds", type=float, help="duration of each ramp step")
    parser.add_argument("--slow-pause", type=float, help="seconds the slow consumer stops reading")
    parser.add_argument(
        "--quiet-wait",
        type=int,
        help="seconds to wait before each run for other processes to calm down (10; quick: 3)",
    )
    parser.add_argument(
        "--minutes", type=float, default=30.0, help="soak: how long the load runs (30)"
    )
    parser.add_argument(
        "--warmup", type=float, help="soak: minutes left out of the trends (a fifth, at most 5)"
    )
    parser.add_argument("--interval", type=float, help="soak: seconds between samples (10)")
    parser.add_argument(
        "--plan",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a field of the plan, e.g. fanout_sizes=10,100 (see scenarios.Plan)",
    )
    return parser.parse_args(argv)


def choose(
    given: str | None, known: tuple[str, ...] | list[str], default: tuple[str, ...]
) -> list[str]:
    if not given:
        return list(default)
    names = [name.strip() for name in given.split(",") if name.strip()]
    unknown = [name for name in names if name not in known]
    if unknown:
        raise SystemExit(f"unknown: {', '.join(unknown)} (choose from {', '.join(known)})")
    return names


def override(plan: Plan, settings: list[str]) -> Plan:
    """``plan`` with ``FIELD=VALUE`` settings applied (tuples as comma-separated values)."""
    changes: dict[str, Any] = {}
    for setting in settings:
        name, _, text = setting.partition("=")
        current = getattr(plan, name.strip(), None)
        if current is None or not text:
            raise SystemExit(f"--plan {setting!r}: expected FIELD=VALUE with a field of Plan")
        if isinstance(current, tuple):
            kind = type(current[0])
            changes[name.strip()] = tuple(kind(v) for v in text.split(",") if v.strip())
        else:
            changes[name.strip()] = type(current)(text)
    return replace(plan, **changes)


def raise_file_limit() -> None:
    """Thousands of sockets: the soft limit on open files goes up to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def version(argv: list[str]) -> str:
    """The first line a local tool prints about itself (``mosquitto -h`` exits with 3)."""
    try:
        # A fixed command line of a tool on this machine, no input from outside.
        result = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)  # noqa: S603
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    lines = (result.stdout or result.stderr).strip().splitlines()
    return lines[0] if lines else "unknown"


def machine() -> dict[str, Any]:
    model = "unknown"
    with Path("/proc/cpuinfo").open(encoding="utf-8") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpus": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "python": platform.python_version(),
        "node": version([node_binary(), "--version"]),
        "mosquitto": version(
            [shutil.which("mosquitto", path="/usr/sbin:/usr/bin") or "mosquitto", "-h"]
        ),
        "redis": version(["redis-server", "--version"]),
        "commit": version(["git", "rev-parse", "--short", "HEAD"]),
    }


async def run_one(
    scenario: Scenario, group: Any, system_name: str, plan: Plan, raw: Path, *, quiet_wait: int
) -> dict[str, Any]:
    """One system through one scenario group, from a fresh start; failures are recorded."""
    label = scenario.label(group)
    workdir = raw / scenario.name / label.replace(" ", "-") / system_name
    record: dict[str, Any] = {
        "scenario": scenario.name,
        "group": label,
        "system": system_name,
        "status": "ok",
        "error": None,
        "steps": [],
    }
    print(f"[{scenario.name} / {label}] {system_name} ...", flush=True)
    record["background_cores_before"] = await quiet_machine(quiet_wait)
    began = time.monotonic()
    system = None
    run = None
    try:
        system = make_system(system_name, workdir, raw)
        endpoint = await asyncio.to_thread(system.start)
        run = Run(system, endpoint, workdir)
        result = await asyncio.wait_for(scenario.body(run, group, plan), RUN_TIMEOUT_SECONDS)
        record.update(result)
    except (SystemFailed, HarnessError, TimeoutError, RuntimeError, OSError) as exc:
        record["status"] = "failed"
        record["error"] = f"{type(exc).__name__}: {exc}"[:2000]
    finally:
        if run is not None:
            await run.close()
        if system is not None:
            await asyncio.to_thread(system.stop)
            record["server_errors"] = system.log_errors()
    setup = record.get("setup") or {}
    if record["status"] == "ok" and setup.get("failed"):
        record["status"] = "partial"  # some browsers could not join; the rest were measured
    record["seconds"] = round(time.monotonic() - began, 1)
    print(f"    {_summary(record)}", flush=True)
    return record


async def quiet_machine(wait: int) -> float:
    """Wait (``wait`` s at most) until other processes leave the machine nearly idle; the
    background load measured last, in cores."""
    background = await background_cores()
    for _ in range(wait):
        if background <= QUIET_CORES:
            break
        background = await background_cores()
    return round(background, 2)


def _summary(record: dict[str, Any]) -> str:
    if record["status"] == "failed":
        return f"FAILED ({record['seconds']} s): {record['error'].splitlines()[0]}"
    parts = [
        f"{s['offered']:g}/s -> {s['delivered_per_s']:g}/s ratio {s['ratio']} p99 {s['p99_ms']} ms"
        + (" [harness-limited]" if s["harness_limited"] else "")
        for s in record["steps"]
    ]
    for idle in record.get("idle") or []:
        kb, p99 = idle["server_kb_per_connection"], idle["handshake_p99_ms"]
        parts.append(f"{idle['connections']}: {kb} KB/conn, handshake p99 {p99} ms")
    if joined_room := record.get("join"):
        parts.append(
            f"{joined_room['sockets']} joined: {joined_room['frames_per_socket']} frames/socket, "
            f"{joined_room['server_kb_per_socket']} KB/socket"
        )
    if back := record.get("reconnect"):
        parts.append(
            f"{back['back']} of {back['closed']} back after {back['all_back_seconds']} s,"
            f" handshake p99 {back['handshake_p99_ms']} ms, replayed {back['replayed']}"
            f" of {back['replay_expected']}, gaps {back['gaps']}"
        )
    knee = f", knee {record['knee']:g}/s" if record.get("knee") else ""
    joined = ""
    if record["status"] == "partial":
        setup = record["setup"]
        joined = f", only {setup['connected']} of {setup['connections']} joined"
    return f"{record['status']} ({record['seconds']} s{knee}{joined}): " + "; ".join(parts)


async def run_all(args: argparse.Namespace) -> int:
    plan = QUICK if args.quick else FULL
    if args.step_seconds:
        plan = replace(plan, step_seconds=args.step_seconds)
    if args.slow_pause:
        plan = replace(plan, slow_pause_seconds=args.slow_pause)
    plan = override(plan, args.plan)
    systems = choose(args.systems, SYSTEM_NAMES, DEFAULT_SYSTEMS)
    scenarios = choose(
        args.scenarios, list(SCENARIOS), QUICK_SCENARIOS if args.quick else tuple(SCENARIOS)
    )
    out: Path = args.out or (HERE / "results" / ("quick" if args.quick else ""))
    raw = out / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    raise_file_limit()
    quiet_wait = args.quiet_wait if args.quiet_wait is not None else (3 if args.quick else 10)
    results: dict[str, Any] = {
        "meta": {
            "started": datetime.now(UTC).isoformat(timespec="seconds"),
            "quick": args.quick,
            "systems": systems,
            "scenarios": scenarios,
            "plan": asdict(plan),
            "machine": machine(),
        },
        "runs": [],
    }
    began = time.monotonic()
    for name in scenarios:
        scenario = SCENARIOS[name]
        for group in scenario.groups(plan):
            # Interleaved: every system runs each group in turn, under the same conditions.
            for system_name in systems:
                if scenario.systems is not None and system_name not in scenario.systems:
                    continue
                record = await run_one(
                    scenario, group, system_name, plan, raw, quiet_wait=quiet_wait
                )
                results["runs"].append(record)
                results["meta"]["seconds"] = round(time.monotonic() - began, 1)
                (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    write_report(results, out)
    print(f"done in {results['meta']['seconds']:.0f} s: {out / 'report.md'}")
    return 0


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.command == "report":
        out = args.out or HERE / "results"
        if (out / "soak.json").exists():
            status = rewrite_report(out)
            print(out / "soak.md")
            return status
        write_report(json.loads((out / "results.json").read_text()), out)
        print(out / "report.md")
        return 0
    try:
        node_binary()
    except HarnessError as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.command == "brokers":
        return run_brokers(args.out or HERE / "results" / "brokers")
    if args.command == "soak":
        raise_file_limit()
        out = args.out or HERE / "results" / "soak"
        soak = run_soak(
            args.minutes, out, machine=machine(), warmup=args.warmup, interval=args.interval
        )
        return asyncio.run(soak)
    return asyncio.run(run_all(args))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
