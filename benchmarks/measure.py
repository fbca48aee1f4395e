"""What is measured: CPU time and memory of processes (from /proc), and latency histograms."""

import asyncio
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
BUCKET_GROWTH = 1.02  # the Node processes' histogram buckets: bucket b holds up to 1.02**b us
HARNESS_CORE_LIMIT = 0.7  # a load or receive process busier than this may be the bottleneck
HARNESS_ROLES = ("load", "receivers")


@dataclass(frozen=True)
class Proc:
    """A process whose CPU time counts: ``role`` is server, bridge, redis, mosquitto, load or
    receivers."""

    role: str
    name: str
    pid: int


def cpu_seconds(pid: int) -> float | None:
    """User plus system CPU time of ``pid`` so far, or None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            text = stat.read()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: fields are counted after its last ")".
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_bytes(pid: int) -> int | None:
    """Resident memory of ``pid``, or None once it is gone."""
    try:
        with open(f"/proc/{pid}/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * PAGE_SIZE
    except OSError:
        return None


def fd_count(pid: int) -> int | None:
    """Open file descriptors of ``pid`` (sockets included), or None once it is gone."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def machine_cpu_seconds() -> tuple[float, float]:
    """CPU seconds all cores spent so far running processes (user, nice, system, steal) and
    handling interrupts (irq, softirq: mostly the kernel's loopback network work)."""
    with open("/proc/stat", encoding="ascii") as stat:
        user, nice, system, _idle, _iowait, irq, softirq, steal = (
            int(v) for v in stat.readline().split()[1:9]
        )
    return (user + nice + system + steal) / CLOCK_TICKS, (irq + softirq) / CLOCK_TICKS


def cpu_count() -> int:
    return len(os.sched_getaffinity(0))


class CpuWindow:
    """CPU seconds each process used between `start` and `stop`; and meanwhile, what every
    other process on the machine used (`background_seconds`: it disturbs the figures) and the
    kernel's interrupt work (`kernel_seconds`)."""

    def __init__(self, procs: Iterable[Proc]) -> None:
        self.procs = list(procs)
        self.before: dict[Proc, float] = {}
        self.machine_before = (0.0, 0.0)
        self.background_seconds = 0.0
        self.kernel_seconds = 0.0

    def start(self) -> None:
        self.before = {p: cpu_seconds(p.pid) or 0.0 for p in self.procs}
        self.machine_before = machine_cpu_seconds()

    def stop(self) -> dict[Proc, float]:
        tasks, kernel = machine_cpu_seconds()
        used = {}
        for proc in self.procs:
            now = cpu_seconds(proc.pid)
            used[proc] = max(0.0, (now if now is not None else 0.0) - self.before.get(proc, 0.0))
        self.background_seconds = max(0.0, tasks - self.machine_before[0] - sum(used.values()))
        self.kernel_seconds = max(0.0, kernel - self.machine_before[1])
        return used


async def background_cores(seconds: float = 0.5) -> float:
    """Cores that processes other than this one keep busy, measured over ``seconds``."""
    window = CpuWindow([Proc("controller", "controller", os.getpid())])
    window.start()
    await asyncio.sleep(seconds)
    window.stop()
    return window.background_seconds / seconds


def by_role(used: Mapping[Proc, float]) -> dict[str, float]:
    """CPU seconds summed per role."""
    roles: dict[str, float] = {}
    for proc, seconds in used.items():
        roles[proc.role] = roles.get(proc.role, 0.0) + seconds
    return {role: round(seconds, 3) for role, seconds in sorted(roles.items())}


def busiest_harness_process(used: Mapping[Proc, float], wall: float) -> float:
    """The largest share of one core that any load or receive process used over ``wall`` s."""
    shares = [s / wall for p, s in used.items() if p.role in HARNESS_ROLES and wall > 0]
    return round(max(shares, default=0.0), 3)


def harness_cores(used: Mapping[Proc, float], wall: float) -> float:
    """Cores that the load and receive processes used together over ``wall`` s."""
    total = sum(s for p, s in used.items() if p.role in HARNESS_ROLES)
    return round(total / wall, 3) if wall > 0 else 0.0


def harness_limited(busiest: float, together: float) -> bool:
    """One load or receive process used more than 70% of a core, or all of them together used
    more than 70% of half the machine (they then took what the system under test needed)."""
    return busiest > HARNESS_CORE_LIMIT or together > HARNESS_CORE_LIMIT * cpu_count() / 2


class Latency:
    """Merged latency histograms from the Node processes (microseconds, 2% buckets)."""

    def __init__(self) -> None:
        self.buckets: dict[int, int] = {}
        self.count = 0
        self.max_us = 0.0

    def add(self, histogram: Mapping[str, Any]) -> None:
        for bucket, count in histogram.get("buckets", {}).items():
            self.buckets[int(bucket)] = self.buckets.get(int(bucket), 0) + int(count)
        self.count += int(histogram.get("count", 0))
        self.max_us = max(self.max_us, float(histogram.get("max_us", 0)))

    def percentile_ms(self, q: float) -> float | None:
        """The latency below which a share ``q`` of the samples fall (to within 2%), in ms."""
        if self.count == 0:
            return None
        rank = max(1, math.ceil(q * self.count))
        seen = 0
        for bucket in sorted(self.buckets):
            seen += self.buckets[bucket]
            if seen >= rank:
                return round(min(BUCKET_GROWTH**bucket, self.max_us) / 1000, 3)
        return round(self.max_us / 1000, 3)

    def max_ms(self) -> float | None:
        return round(self.max_us / 1000, 3) if self.count else None


def per_thousand(seconds: Mapping[str, float], deliveries: int) -> dict[str, float | None]:
    """CPU seconds per 1,000 deliveries, per role."""
    return {
        role: (round(s * 1000 / deliveries, 4) if deliveries else None)
        for role, s in seconds.items()
    }
