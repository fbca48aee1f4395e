"""``report.md`` and the plots, written from ``results.json`` alone."""

import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from benchmarks.harness import KNEE_P99_MS, KNEE_RATIO
from benchmarks.scenarios import SCENARIOS

ROLES = ("server", "bridge", "redis", "mosquitto", "load", "receivers")
RAMPS = ("fanout", "ingest", "uplink")
BUSY_MACHINE_CORES = 0.3  # background load that makes a step's figures doubtful


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else ""
    if isinstance(value, float):
        if value >= 10:
            return f"{value:,.0f}"
        return f"{value:.{digits}f}" if value >= 1 else f"{value:.{digits + 2}g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _table(header: list[str], rows: Iterable[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(cell) for cell in row) + " |" for row in rows]
    return lines


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _groups(results: dict[str, Any], scenario: str) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for run in results["runs"]:
        if run["scenario"] == scenario:
            groups.setdefault(run["group"], []).append(run)
    return groups


def _failures(runs: list[dict[str, Any]]) -> list[str]:
    """What went wrong: failed runs, browsers that could not join, exceptions in server logs."""
    lines = []
    for r in runs:
        if r["status"] == "failed":
            lines.append(
                f"- **{r['system']}** failed: `{(r['error'] or '').splitlines()[0][:300]}`"
            )
        elif r["status"] == "partial":
            setup = r["setup"]
            lines.append(
                f"- **{r['system']}**: only {setup['connected']:,} of {setup['connections']:,} "
                f"browsers could join (client errors: {'; '.join(sorted(set(setup['errors'])))})"
            )
        for error in r.get("server_errors") or []:
            lines.append(f"  - {r['system']} server log: `{error}`")
    return [*lines, ""] if lines else []


def _knee_text(run: dict[str, Any]) -> str:
    if run["status"] == "failed":
        return "failed"
    knee = run.get("knee")
    if knee is None:
        return "below the first step"
    notes = []
    text = f"{knee:,.0f}"
    if _passed_all(run):
        text = f"≥ {text}"
        notes.append("every step passed")
    if any(s["harness_limited"] and s["offered"] == knee for s in run["steps"]):
        notes.append("harness-limited")
    if run["status"] == "partial":
        notes.append(f"only {run['setup']['connected']:,} joined")
    return text + (f" ({'; '.join(notes)})" if notes else "")


def _passed_all(run: dict[str, Any]) -> bool:
    """Every step of the ramp met the knee criteria: the knee is only a lower bound."""
    return bool(run["steps"]) and all(s["ok"] for s in run["steps"])


def _ramp_section(runs: list[dict[str, Any]], unit: str) -> list[str]:
    systems = [r["system"] for r in runs if r["status"] != "failed"]
    offered = sorted({s["offered"] for r in runs for s in r["steps"]})
    lines = [f"Knee ({unit}/s): " + "; ".join(f"{r['system']} {_knee_text(r)}" for r in runs), ""]
    if offered:
        by = {(r["system"], s["offered"]): s for r in runs for s in r["steps"]}
        rows = []
        for rate in offered:
            row: list[Any] = [rate]
            for system in systems:
                s = by.get((system, rate))
                if s is None:
                    row.append("")
                    continue
                mark = "" if s["ok"] else " ✗"
                mark += " ‡" if s["harness_limited"] else ""
                mark += " §" if s["background_cores"] > BUSY_MACHINE_CORES else ""
                row.append(f"{_fmt(s['delivered_per_s'])} / {_fmt(s['p99_ms'])} ms{mark}")
            rows.append(row)
        lines += [
            f"Delivered {unit}/s / p99 latency, per offered rate (✗ below the knee criteria, "
            f"‡ harness-limited, § other processes kept over {BUSY_MACHINE_CORES} cores busy):",
            "",
            *_table([f"offered {unit}/s", *systems], rows),
            "",
        ]
    lines += _details(runs)
    return lines


def _details(runs: list[dict[str, Any]]) -> list[str]:
    rows = []
    for r in runs:
        for s in r["steps"]:
            per = s["cpu_per_1k"]
            rows.append(
                [
                    r["system"],
                    s["offered"],
                    s["delivered_per_s"],
                    s["ratio"],
                    s["p50_ms"],
                    s["p99_ms"],
                    s["max_ms"],
                    s["system_cpu_per_1k"],
                    *(per.get(role) for role in ROLES),
                    s["drops"],
                    s["busiest_harness_core"],
                    s["harness_cores"],
                    s["harness_limited"],
                    s["background_cores"],
                ]
            )
    if not rows:
        return _failures(runs)
    header = [
        "system",
        "offered/s",
        "delivered/s",
        "ratio",
        "p50 ms",
        "p99 ms",
        "max ms",
        "CPU s/1k",
        *(f"{role} s/1k" for role in ROLES),
        "drops",
        "busiest harness process (cores)",
        "harness (cores)",
        "harness-limited",
        "background (cores)",
    ]
    return [
        "<details><summary>Every step</summary>",
        "",
        *_table(header, rows),
        "",
        "</details>",
        "",
        *_failures(runs),
    ]


def _idle_section(runs: list[dict[str, Any]]) -> list[str]:
    rows = []
    for r in runs:
        for idle in r.get("idle") or []:
            cpu = sum(idle["idle_cpu_share"].values())
            rows.append(
                [
                    r["system"],
                    f"{idle['connected']:,} of {idle['connections']:,}",
                    idle["server_kb_per_connection"],
                    idle["redis_kb_per_connection"],
                    idle["server_rss_after_mb"],
                    idle["handshakes"],
                    idle["handshake_p50_ms"],
                    idle["handshake_p99_ms"],
                    round(cpu, 3),
                ]
            )
    header = [
        "system",
        "joined",
        "server KB/conn",
        "Redis KB/conn",
        "server RSS MB",
        "handshakes",
        "handshake p50 ms",
        "handshake p99 ms",
        "idle CPU (cores)",
    ]
    return [*_table(header, rows), "", *_failures(runs)]


def _join_section(runs: list[dict[str, Any]]) -> list[str]:
    rows = [
        [
            r["system"],
            f"{j['sockets']:,}",
            j["frames_per_socket"],
            f"{j['frames']:,}",
            j["welcomes_seconds"],
            j["quiet_after_seconds"],
            j["server_kb_per_socket"],
            j["server_rss_after_mb"],
            j["handshake_p50_ms"],
            j["handshake_p99_ms"],
        ]
        for r in runs
        if (j := r.get("join"))
    ]
    header = [
        "system",
        "joined",
        "frames per socket",
        "frames",
        "all welcomed after s",
        "quiet after s",
        "server KB/socket",
        "server RSS MB",
        "handshake p50 ms",
        "handshake p99 ms",
    ]
    return [*_table(header, rows), "", *_failures(runs)]


def _reconnect_section(runs: list[dict[str, Any]]) -> list[str]:
    rows = [
        [
            r["system"],
            f"{b['back']:,} of {b['closed']:,}",
            b["server_down_seconds"],
            b["all_back_seconds"],
            b["away_p50_ms"],
            b["away_p99_ms"],
            b["handshake_p50_ms"],
            b["handshake_p99_ms"],
            f"{b['refused_attempts']:,}",
            f"{b.get('busy_attempts', 0):,}",
            "-" if b["replayed"] is None else f"{b['replayed']:,} of {b['replay_expected']:,}",
            "-" if b["gaps"] is None else b["gaps"],
            b["server_rss_after_mb"],
        ]
        for r in runs
        if (b := r.get("reconnect"))
    ]
    header = [
        "system",
        "back",
        "server down s",
        "all back after s",
        "away p50 ms",
        "away p99 ms",
        "handshake p50 ms",
        "handshake p99 ms",
        "refused attempts",
        "of which busy",
        "replayed",
        "gaps",
        "server RSS MB",
    ]
    return [*_table(header, rows), "", *_failures(runs)]


def _single_section(runs: list[dict[str, Any]]) -> list[str]:
    rows = []
    for r in runs:
        for s in r["steps"]:
            rows.append(
                [
                    r["system"],
                    s["offered"],
                    s["delivered_per_s"],
                    s["ratio"],
                    s["p50_ms"],
                    s["p99_ms"],
                    s["max_ms"],
                    s["system_cpu_per_1k"],
                    s["drops"],
                    s["harness_limited"],
                ]
            )
    header = [
        "system",
        "offered/s",
        "delivered/s",
        "ratio",
        "p50 ms",
        "p99 ms",
        "max ms",
        "CPU s/1k",
        "drops",
        "harness-limited",
    ]
    return [*_table(header, rows), "", *_details(runs)]


def _slow_section(runs: list[dict[str, Any]]) -> list[str]:
    rows = []
    for r in runs:
        for s in r["steps"]:
            stalled = s.get("stalled_client", {})
            rows.append(
                [
                    r["system"],
                    s["ratio"],
                    s["p99_ms"],
                    s["max_ms"],
                    s.get("server_rss_start_mb"),
                    s.get("server_rss_peak_mb"),
                    s["drops"],
                    f"{stalled.get('messages', 0):,} of {s['sent']:,}",
                    stalled.get("closed"),
                ]
            )
    header = [
        "system",
        "others' ratio",
        "others' p99 ms",
        "others' max ms",
        "server RSS start MB",
        "server RSS peak MB",
        "server drops",
        "stalled client got (after resuming)",
        "stalled client closed",
    ]
    return [*_table(header, rows), "", *_failures(runs)]


def _summary(results: dict[str, Any]) -> list[str]:
    lines = ["## Summary", ""]
    rows = []
    systems = results["meta"]["systems"]
    for scenario in RAMPS:
        for group, runs in _groups(results, scenario).items():
            by = {r["system"]: r for r in runs}
            rows.append(
                [f"{scenario}, {group}", *(_knee_text(by[s]) if s in by else "" for s in systems)]
            )
    if rows:
        lines += [
            f"Knees: the highest offered rate (deliveries/s) with ≥ {KNEE_RATIO:.1%} delivered "
            f"and p99 ≤ {KNEE_P99_MS:g} ms.",
            "",
            *_table(["scenario", *systems], rows),
            "",
        ]
    ratios = []
    for scenario in RAMPS:
        for group, runs in _groups(results, scenario).items():
            ok = {r["system"]: r for r in runs if r["status"] != "failed"}
            reference = ok.get("mosquitto")
            if reference is None or not reference.get("knee"):
                continue
            # Where Mosquitto passed every step its knee is a lower bound, so ratios are upper.
            bound = "≤ " if _passed_all(reference) else ""
            for system, run in ok.items():
                if system != "mosquitto" and run.get("knee"):
                    ratio = run["knee"] / reference["knee"]
                    ratios.append(f"{scenario}, {group}: {system}/mosquitto {bound}{ratio:.3g}")
    if ratios:
        lines += ["Knee ratios to the Mosquitto reference:", "", *(f"- {r}" for r in ratios), ""]
    return [*lines, *_glance(results)]


def _glance(results: dict[str, Any]) -> list[str]:
    """One line per system for the scenarios that have no knee."""
    systems = results["meta"]["systems"]
    rows: list[list[Any]] = []

    def row(label: str, scenario: str, value: Callable[[dict[str, Any]], Any]) -> None:
        runs = [r for r in results["runs"] if r["scenario"] == scenario]
        if not runs:
            return
        by = {r["system"]: r for r in runs if r["status"] != "failed"}
        rows.append([label, *(value(by[s]) if s in by else "failed" for s in systems)])

    def step(r: dict[str, Any]) -> dict[str, Any]:
        steps: list[dict[str, Any]] = r["steps"]
        return steps[0] if steps else {}

    def last_idle(r: dict[str, Any]) -> dict[str, Any]:
        counts: list[dict[str, Any]] = r.get("idle") or [{}]
        return counts[-1]

    row(
        "iot: p99 ms (ratio)",
        "iot",
        lambda r: f"{_fmt(step(r).get('p99_ms'))} ({step(r).get('ratio')})",
    )
    row(
        "idle: server KB per socket", "idle", lambda r: last_idle(r).get("server_kb_per_connection")
    )
    row("idle: handshake p99 ms", "idle", lambda r: last_idle(r).get("handshake_p99_ms"))
    row("join: frames per socket", "join", lambda r: (r.get("join") or {}).get("frames_per_socket"))
    row(
        "join: server KB per socket",
        "join",
        lambda r: (r.get("join") or {}).get("server_kb_per_socket"),
    )
    row(
        "reconnect: all back after s",
        "reconnect",
        lambda r: (r.get("reconnect") or {}).get("all_back_seconds"),
    )
    row(
        "reconnect: handshake p99 ms",
        "reconnect",
        lambda r: (r.get("reconnect") or {}).get("handshake_p99_ms"),
    )
    row("slow: others' p99 ms", "slow", lambda r: step(r).get("p99_ms"))
    row(
        "slow: server RSS growth MB",
        "slow",
        lambda r: (
            round(step(r)["server_rss_peak_mb"] - step(r)["server_rss_start_mb"], 1)
            if step(r)
            else None
        ),
    )
    if not rows:
        return []
    return ["Scenarios without a knee, at a glance:", "", *_table(["", *systems], rows), ""]


def write_report(results: dict[str, Any], out: Path) -> None:
    meta = results["meta"]
    machine = meta["machine"]
    lines = [
        "# Benchmark results",
        "",
        f"Run {meta['started']} on {machine['cpus']} CPUs ({machine['cpu_model']}), commit "
        f"{machine['commit']}, {meta.get('seconds', 0):.0f} s in all"
        + (" (quick mode: a tiny subset)" if meta["quick"] else "")
        + f". Python {machine['python']}, Node {machine['node']}, {machine['mosquitto']}, "
        f"{machine['redis']}.",
        "",
        "How to read the columns: `benchmarks/README.md`. These are the figures of one run, with"
        " the load and receive processes on the same machine as the systems; where a system's p99"
        " sits near 100 ms its knee can move by one step from run to run.",
        "",
        *_summary(results),
    ]
    plots = _plots(results, out)
    for name in meta["scenarios"]:
        scenario = SCENARIOS[name]
        lines += [f"## {scenario.title}", ""]
        for group, runs in _groups(results, name).items():
            lines += [f"### {group}", ""]
            if name in RAMPS:
                unit = "deliveries" if name == "fanout" else "messages"
                lines += _ramp_section(runs, unit)
            elif name == "idle":
                lines += _idle_section(runs)
            elif name == "join":
                lines += _join_section(runs)
            elif name == "reconnect":
                lines += _reconnect_section(runs)
            elif name == "slow":
                lines += _slow_section(runs)
            else:
                lines += _single_section(runs)
            for plot in plots.get((name, group), []):
                lines += [f"![{name}, {group}]({plot})", ""]
    (out / "report.md").write_text("\n".join(lines).rstrip() + "\n")


def _plots(results: dict[str, Any], out: Path) -> dict[tuple[str, str], list[str]]:
    """PNG plots next to the report, by (scenario, group): ramps, the join and reconnect storms
    side by side, and memory over time."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return {}
    made: dict[tuple[str, str], list[str]] = {}
    for scenario in RAMPS:
        for group, runs in _groups(results, scenario).items():
            ok = [r for r in runs if r["status"] != "failed" and r["steps"]]
            if not ok:
                continue
            figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
            highest = max(s["offered"] for r in ok for s in r["steps"])
            left.plot([0, highest], [0, highest], color="0.8", linestyle="--", label="offered")
            for r in ok:
                xs = [s["offered"] for s in r["steps"]]
                left.plot(
                    xs, [s["delivered_per_s"] for s in r["steps"]], marker="o", label=r["system"]
                )
                right.plot(
                    xs,
                    [s["p99_ms"] or float("nan") for s in r["steps"]],
                    marker="o",
                    label=r["system"],
                )
            right.axhline(KNEE_P99_MS, color="0.8", linestyle="--")
            for axis, ylabel in ((left, "delivered/s"), (right, "p99 latency (ms)")):
                axis.set_xscale("log")
                axis.set_yscale("log")
                axis.set_xlabel("offered/s")
                axis.set_ylabel(ylabel)
                axis.grid(True, which="both", alpha=0.3)
                axis.legend(fontsize=8)
            made[(scenario, group)] = [_save(plt, figure, out, scenario, group)]
    made.update(_bar_plots(plt, results, out))
    for group, runs in _groups(results, "slow").items():
        ok = [r for r in runs if r["status"] != "failed" and r["steps"]]
        if not ok:
            continue
        figure, axis = plt.subplots(figsize=(7, 4))
        for r in ok:
            timeline = r["steps"][0].get("rss_timeline_mb", [])
            axis.plot(
                [t for t, _ in timeline], [mb for _, mb in timeline], marker=".", label=r["system"]
            )
        axis.set_xlabel("seconds since the client stopped reading")
        axis.set_ylabel("server RSS (MB)")
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=8)
        made[("slow", group)] = [_save(plt, figure, out, "slow", group)]
    return made


def _save(plt: Any, figure: Any, out: Path, scenario: str, group: str) -> str:
    """Title ``figure`` for the scenario's group, write it next to the report; its file name."""
    figure.suptitle(f"{SCENARIOS[scenario].title}: {group}")
    figure.tight_layout()
    name = f"{scenario}-{_slug(group)}.png"
    figure.savefig(out / name, dpi=90)
    plt.close(figure)
    return name


# The one-shot scenarios plotted as bars, one panel per measure, a bar per system:
# scenario -> (the run's record, [(panel title, field)]).
BARS: dict[str, tuple[str, list[tuple[str, str]]]] = {
    "join": (
        "join",
        [
            ("frames per socket", "frames_per_socket"),
            ("all welcomed after (s)", "welcomes_seconds"),
            ("server memory per socket (KB)", "server_kb_per_socket"),
            ("handshake p99 (ms)", "handshake_p99_ms"),
        ],
    ),
    "reconnect": (
        "reconnect",
        [
            ("all back after (s)", "all_back_seconds"),
            ("time away p99 (ms)", "away_p99_ms"),
            ("handshake p99 (ms)", "handshake_p99_ms"),
            ("server memory after (MB)", "server_rss_after_mb"),
        ],
    ),
}


def _bar_plots(plt: Any, results: dict[str, Any], out: Path) -> dict[tuple[str, str], list[str]]:
    """The `BARS` scenarios: a panel per measure, a bar per system (a measure a system lacks
    is marked "none")."""
    made: dict[tuple[str, str], list[str]] = {}
    for scenario, (key, measures) in BARS.items():
        for group, runs in _groups(results, scenario).items():
            ok = [r for r in runs if r["status"] != "failed" and r.get(key)]
            if not ok:
                continue
            figure, axes = plt.subplots(1, len(measures), figsize=(3.2 * len(measures), 3.6))
            systems = [r["system"] for r in ok]
            for axis, (label, field) in zip(axes, measures, strict=True):
                values = [r[key].get(field) for r in ok]
                bars = axis.bar(systems, [v if v is not None else 0 for v in values], color="C0")
                for bar, value in zip(bars, values, strict=True):
                    axis.annotate(
                        "none" if value is None else f"{value:,.1f}",
                        (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center",
                        va="bottom",
                        fontsize=8,
                    )
                axis.set_title(label, fontsize=9)
                axis.tick_params(axis="x", labelsize=8, rotation=20)
                axis.grid(True, axis="y", alpha=0.3)
            made[(scenario, group)] = [_save(plt, figure, out, scenario, group)]
    return made
