"""``python -m benchmarks soak``: the gateway under a steady, mixed load for a long while, its
memory and descriptors sampled, and a verdict on each series: flat, or grows.

python -m benchmarks soak --minutes 30 --out benchmarks/results/soak
python -m benchmarks soak --minutes 0.5 --out /tmp/soak      # a quick look

The system is the benchmarks' ``gateway`` (daphne serving ``config.asgi``, one ``runworker
mqtt-bridge``, Redis and Mosquitto, on free loopback ports); the load comes from the same Node
processes as the benchmarks' (see `Load`). Every ``interval`` seconds the controller reads the
RSS and open descriptors of daphne, the bridge worker, Mosquitto and Redis from ``/proc``,
Redis's ``used_memory`` and ``DBSIZE``, and the running totals of what was sent and delivered.
It writes ``soak.json`` (every sample), ``soak.md`` (the table and the verdicts) and
``soak.png``, and exits with 1 when any series grows (see `judge`).
"""

import asyncio
import contextlib
import json
import math
import os
import re
import signal
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis

from benchmarks.harness import Run
from benchmarks.measure import (
    Latency,
    Proc,
    cpu_seconds,
    fd_count,
    machine_cpu_seconds,
    rss_bytes,
)
from benchmarks.nodeproc import HarnessError, NodeProcess
from benchmarks.systems import Endpoint, GatewaySystem, SystemFailed, make_system
from tests.support.processes import REPO

HERE = Path(__file__).resolve().parent
MIB = 1024 * 1024
HISTORY_WINDOW = 1000  # gateway.history.WINDOW: the recent messages of each room kept in Redis
PREFILL_RATE = 400.0  # msg/s while the rooms' windows are filled, before the load starts
PREFILL_MIN_MINUTES = 5.0  # shorter runs skip the prefill (they are too short to judge anyway)
PREFILL_STEP = 1  # the step of the prefill's messages; round r uses r * 10 + 1 ... r * 10 + 4
INTERVAL_SECONDS = 10.0
WARMUP_MAX_MINUTES = 5.0  # the warm-up: a fifth of the run, at most this
GROWTH_SHARE = 0.05  # a series may drift by this share of its mean over the run ...
RSS_FLOOR_MIB = 2.0  # ... or by this much, whichever is more
FDS_FLOOR = 5.0
REDIS_MEMORY_FLOOR_MIB = 1.0
REDIS_KEYS_FLOOR = 50.0
DRAIN_SECONDS = 2.0  # after the last round, for late deliveries
SEND_SLACK_SECONDS = 30.0
# The marks of the QoS 1 device messages that entered a room, one Redis key each, kept for an
# hour (a broker session's lifetime) so that a copy the broker redelivers is dropped: bounded,
# but they grow for the first hour. Recorded with the history append (`once:`), or, before
# that, by the bridge (`delivered:`).
MARKS = ("gateway:*:once:*", "gateway:*:delivered:*")
MARKS_TTL_SECONDS = 3600  # gateway.history.ONCE_SECONDS
ROLE_NAMES = {"server": "daphne", "bridge": "bridge", "mosquitto": "mosquitto", "redis": "redis"}
EXIT_GROWS, EXIT_FAILED, EXIT_INTERRUPTED = 1, 2, 130


@dataclass(frozen=True)
class Load:
    """What runs against the gateway during the soak: moderate, to find leaks, not limits."""

    rooms: int = 50
    devices_qos0: int = 50  # MQTT connections publishing at QoS 0, one topic each ...
    devices_qos1: int = 50  # ... and at QoS 1; device i publishes into room i % rooms
    device_rate: float = 1.0  # msg/s from each device
    retained_topics: int = 5  # device topics that get a retained message every round
    browsers_per_room: int = 2  # stay the whole run and count what they receive
    uplink_browsers: int = 20  # also in the rooms; each sends `uplink_rate` frames a second
    uplink_rate: float = 0.5
    churn_browsers: int = 40  # leave and come back, `churn_per_round` of them every round
    churn_per_round: int = 8
    payload_bytes: int = 200

    def describe(self, interval: float) -> list[str]:
        rooms = self.rooms
        return [
            f"{self.devices_qos0 + self.devices_qos1} devices over MQTT, {self.device_rate:g} "
            f"msg/s each ({self.devices_qos0} at QoS 0, {self.devices_qos1} at QoS 1), "
            f"into {rooms} rooms; {self.retained_topics} retained device topics, each "
            f"published again every {interval:g} s.",
            f"{self.browsers_per_room * rooms} browsers ({self.browsers_per_room} in each room) "
            "that stay and count what they receive.",
            f"{self.uplink_browsers} browsers that send {self.uplink_rate:g} frames/s each: the "
            "messages go into their rooms and out to MQTT, where a subscriber to "
            "`rooms/+/gateway` counts them.",
            f"{self.churn_browsers} browsers that leave and come back, {self.churn_per_round} "
            f"every {interval:g} s: every other one drops its connection without a close "
            "handshake, and half of them come back with `?since=<last seq>`.",
            f"Payloads of {self.payload_bytes} bytes (JSON).",
        ]


@dataclass(frozen=True)
class Series:
    """One sampled quantity: its key in the samples, and the least drift that counts."""

    key: str
    title: str
    unit: str
    floor: float


# The judged series: the exit status depends on these.
SERIES = (
    Series("daphne_rss_mib", "daphne RSS", "MiB", RSS_FLOOR_MIB),
    Series("daphne_fds", "daphne open fds", "fds", FDS_FLOOR),
    Series("bridge_rss_mib", "bridge worker RSS", "MiB", RSS_FLOOR_MIB),
    Series("bridge_fds", "bridge worker open fds", "fds", FDS_FLOOR),
    Series("mosquitto_rss_mib", "Mosquitto RSS", "MiB", RSS_FLOOR_MIB),
    Series("mosquitto_fds", "Mosquitto open fds", "fds", FDS_FLOOR),
    Series("redis_rss_net_mib", "Redis RSS", "MiB", RSS_FLOOR_MIB),
    Series("redis_used_memory_net_mib", "Redis used_memory", "MiB", REDIS_MEMORY_FLOOR_MIB),
    Series("redis_keys_net", "Redis keys", "keys", REDIS_KEYS_FLOOR),
)
# Redis as sampled, the QoS 1 marks included: shown, not judged.
RAW_SERIES = (
    Series("redis_rss_mib", "Redis RSS, marks included", "MiB", RSS_FLOOR_MIB),
    Series("redis_used_memory_mib", "Redis used_memory, marks included", "MiB", 0.0),
    Series("redis_keys", "Redis keys (DBSIZE), marks included", "keys", 0.0),
    Series("redis_marks", "QoS 1 marks", "keys", 0.0),
)
RULE = (
    f"A series is judged on its samples after the warm-up: their least-squares slope, times "
    f"the length of the whole run, is the drift its trend predicts over the run. The series "
    f"**grows** when that drift is above max({GROWTH_SHARE:.0%} of its mean after the warm-up, "
    f"a floor: {RSS_FLOOR_MIB:g} MiB of RSS, {FDS_FLOOR:g} descriptors, "
    f"{REDIS_MEMORY_FLOOR_MIB:g} MiB of Redis used_memory, {REDIS_KEYS_FLOOR:g} Redis keys); "
    f"otherwise it is **flat** (a falling series is flat). The command exits with status 1 "
    f"when any series grows."
)
MARKS_NOTE = (
    "The gateway keeps one Redis key per QoS 1 device message for an hour "
    "(`gateway:<GATEWAY_ID>:once:<room>:<id>`; before the history append recorded them, "
    "`gateway:<GATEWAY_ID>:delivered:<id>`), so that a copy the broker redelivers after a "
    "bridge crash is dropped. They grow for the first hour by design, then level off at "
    "(QoS 1 messages/s) x 3,600 keys; a shorter run would see them as growth. So the Redis "
    "rows above leave them out: keys are DBSIZE minus the marks (counted at every sample), "
    "memory is minus the marks times the bytes one mark takes, measured at the end by "
    "deleting them and reading how much used_memory fell."
)


@dataclass
class Totals:
    """Running totals of the load; deliveries count rounds once they are reported (the round
    after they were sent)."""

    device_sent: int = 0
    retained_sent: int = 0
    uplink_sent: int = 0
    expected: int = 0  # deliveries the staying browsers should have had, reported rounds
    delivered: int = 0  # deliveries the staying browsers counted, reported rounds
    duplicates: int = 0
    uplink_expected: int = 0  # browser messages that should have reached MQTT, reported rounds
    uplink_delivered: int = 0
    other_deliveries: int = 0  # to the sending and the coming-and-going browsers
    reconnects: int = 0
    resumed: int = 0  # reconnects with ?since=
    replayed: int = 0  # messages the resumed welcomes carried
    gaps: int = 0  # resumed welcomes that said messages were missing
    reconnect_failed: int = 0
    server_closed: int = 0  # staying browsers the server closed
    rounds: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def sent(self) -> int:
        return self.device_sent + self.retained_sent + self.uplink_sent


@dataclass
class Soak:
    """The run's state: what the samples and the report are made of."""

    load: Load
    minutes: float
    interval: float
    warmup_s: float
    prefill: int
    meta: dict[str, Any]
    totals: Totals = field(default_factory=Totals)
    samples: list[dict[str, Any]] = field(default_factory=list)
    rounds: list[dict[str, Any]] = field(default_factory=list)
    load_started: float | None = None  # monotonic time the steady load began

    @property
    def load_s(self) -> float:
        return self.minutes * 60

    def t(self) -> float:
        """Seconds since the load began (0 before it)."""
        return time.monotonic() - (self.load_started or time.monotonic())

    def begin_load(self) -> None:
        """The steady load begins now: the prefill's samples get their (negative) times."""
        self.load_started = time.monotonic()
        for sample in self.samples:
            if "at" in sample:
                sample["t"] = round(sample.pop("at") - self.load_started, 1)

    def phase(self, t: float) -> str:
        if self.load_started is None:
            return "prefill"
        return "warmup" if t < self.warmup_s else "measured"


def default_warmup(minutes: float) -> float:
    return min(WARMUP_MAX_MINUTES, minutes / 5)


def default_interval(minutes: float) -> float:
    """Every 10 s; a run shorter than 100 s gets ten samples or so all the same."""
    return max(1.0, min(INTERVAL_SECONDS, minutes * 60 / 10))


def raw_dir(out: Path) -> Path:
    """Where the processes' logs and databases go: ``raw/`` beside the results (for results
    under ``benchmarks/results/``, in its ``raw/``, which is not committed)."""
    results = (HERE / "results").resolve()
    try:
        relative = out.resolve().relative_to(results)
    except ValueError:
        return out / "raw"
    return results / "raw" / relative


def _git(*args: str) -> str:
    """What git prints (a leading space of ``status --porcelain`` included)."""
    try:
        # git with fixed arguments, on this repository.
        result = subprocess.run(  # noqa: S603
            ["git", *args],  # noqa: S607
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return result.stdout.rstrip()


def source_state() -> dict[str, Any]:
    """The commit measured, and which of the gateway's files differed from it."""
    changed = [
        line[3:]
        for line in _git(
            "status", "--porcelain", "--", "config", "gateway", "protocols", "bridges"
        ).splitlines()
        if len(line) > 3
    ]
    return {
        "commit": _git("rev-parse", "HEAD").strip() or "unknown",
        "uncommitted_changes": changed,
    }


# Sampling.


def redis_state(client: redis.Redis) -> dict[str, Any]:
    """used_memory, DBSIZE and the QoS 1 marks among the keys, from Redis itself."""
    memory = client.info("memory")
    return {
        "redis_used_memory_mib": round(int(memory["used_memory"]) / MIB, 3),
        "redis_keys": int(client.dbsize()),
        "redis_marks": sum(1 for _ in _marks(client)),
    }


def _marks(client: redis.Redis) -> Iterator[bytes]:
    for pattern in MARKS:
        yield from client.scan_iter(match=pattern, count=5000)


def measure_marks(client: redis.Redis) -> dict[str, Any]:
    """The bytes one QoS 1 mark takes: delete them all (the load is over) and read how much
    used_memory fell. Redis shrinks its emptied hash tables within a second or so."""
    before = int(client.info("memory")["used_memory"])
    keys = list(_marks(client))
    for start in range(0, len(keys), 1000):
        client.delete(*keys[start : start + 1000])
    time.sleep(2.0)
    after = int(client.info("memory")["used_memory"])
    per_mark = (before - after) / len(keys) if keys else None
    return {
        "marks": len(keys),
        "freed_mib": round((before - after) / MIB, 3),
        "bytes_per_mark": None if per_mark is None else round(per_mark, 1),
    }


def add_net_series(soak: "Soak") -> None:
    """The Redis series without the QoS 1 marks, in every sample that has them."""
    per_mark = (soak.meta.get("marks") or {}).get("bytes_per_mark")
    for sample in soak.samples:
        marks = sample.get("redis_marks")
        if marks is None or (marks and per_mark is None):
            continue
        marks_mib = marks * (per_mark or 0.0) / MIB
        if "redis_keys" in sample:
            sample["redis_keys_net"] = sample["redis_keys"] - marks
        for raw, net in (
            ("redis_used_memory_mib", "redis_used_memory_net_mib"),
            ("redis_rss_mib", "redis_rss_net_mib"),
        ):
            if sample.get(raw) is not None:
                sample[net] = round(sample[raw] - marks_mib, 3)


class Sampler:
    """Samples /proc, Redis and the totals so far; ``harness`` gives the Node processes."""

    def __init__(
        self, soak: Soak, system: GatewaySystem, harness: Callable[[], list[Proc]]
    ) -> None:
        self.soak = soak
        self.procs = {ROLE_NAMES[p.role]: p for p in system.procs() if p.role in ROLE_NAMES}
        missing = set(ROLE_NAMES.values()) - set(self.procs)
        if missing:
            raise SystemFailed(f"the gateway lacks processes: {', '.join(sorted(missing))}")
        assert system.redis is not None
        self.redis: redis.Redis = redis.Redis.from_url(system.redis.url, socket_timeout=30)
        self.harness = harness
        self.last_cpu: dict[str, float] = {}
        self.last_machine: float | None = None
        self.last_time = 0.0
        self.latest_p99: float | None = None

    def _cpu(self, harness: Sequence[Proc]) -> dict[str, float]:
        """Cumulative CPU seconds per role: the four servers, load (Node), controller."""
        used = {name: cpu_seconds(p.pid) or 0.0 for name, p in self.procs.items()}
        used["load"] = sum(cpu_seconds(p.pid) or 0.0 for p in harness)
        used["controller"] = cpu_seconds(os.getpid()) or 0.0
        return used

    async def sample(self) -> dict[str, Any]:
        soak = self.soak
        t = soak.t()
        now = time.monotonic()
        values: dict[str, Any] = {"t": round(t, 1), "phase": soak.phase(t)}
        if soak.load_started is None:
            values["at"] = now  # its time is known once the load begins
        for name, proc in self.procs.items():
            rss = rss_bytes(proc.pid)
            values[f"{name}_rss_mib"] = None if rss is None else round(rss / MIB, 3)
            values[f"{name}_fds"] = fd_count(proc.pid)
        try:
            values.update(await asyncio.to_thread(redis_state, self.redis))
        except redis.RedisError as exc:
            soak.totals.errors.append(f"Redis INFO failed: {exc}")
        harness = self.harness()
        values["load_rss_mib"] = round(sum(rss_bytes(p.pid) or 0 for p in harness) / MIB, 1)
        cpu = self._cpu(harness)
        machine = sum(machine_cpu_seconds())
        if self.last_machine is not None and now > self.last_time:
            wall = now - self.last_time
            cores = {k: max(0.0, v - self.last_cpu.get(k, 0.0)) / wall for k, v in cpu.items()}
            values["cores"] = {k: round(v, 3) for k, v in cores.items()}
            ours = sum(cores.values())
            values["background_cores"] = round(
                max(0.0, (machine - self.last_machine) / wall - ours), 3
            )
        self.last_cpu, self.last_machine, self.last_time = cpu, machine, now
        values["p99_ms"] = self.latest_p99
        values["totals"] = {k: v for k, v in asdict(soak.totals).items() if k != "errors"}
        soak.samples.append(values)
        return values

    async def run(self, every: float, limit: int) -> None:
        """Sample every ``every`` s, at most ``limit`` times (the run cancels it first)."""
        began = time.monotonic()
        for index in range(limit):
            await self.sample()
            await asyncio.sleep(max(0.0, began + (index + 1) * every - time.monotonic()))

    def close(self) -> None:
        self.redis.close()


def redis_families(client: redis.Redis, limit: int = 5_000_000) -> list[dict[str, Any]]:
    """Redis's keys at the end, grouped by their shape (room names, ids and numbers as ``*``):
    how many, how many expire, and the longest time to live left."""
    families: dict[str, dict[str, Any]] = {}
    batch: list[bytes] = []

    def flush() -> None:
        pipeline = client.pipeline(transaction=False)
        for key in batch:
            pipeline.ttl(key)
        for key, ttl in zip(batch, pipeline.execute(), strict=True):
            name = _family(key.decode(errors="replace"))
            entry = families.setdefault(name, {"family": name, "keys": 0, "expiring": 0})
            entry["keys"] += 1
            if ttl is not None and int(ttl) >= 0:
                entry["expiring"] += 1
                entry["max_ttl_s"] = max(int(ttl), entry.get("max_ttl_s", 0))
        batch.clear()

    for count, key in enumerate(client.scan_iter(count=1000)):
        if count >= limit:
            break
        batch.append(key)
        if len(batch) >= 1000:
            flush()
    if batch:
        flush()
    return sorted(families.values(), key=lambda f: -int(f["keys"]))


def _family(key: str) -> str:
    key = re.sub(r"soak-\d+", "soak-*", key)
    key = re.sub(r"[0-9a-f]{12,}|[A-Za-z0-9]{20,}", "*", key)
    return re.sub(r"\d+", "N", key)


# The load.


@dataclass
class Fleet:
    """The load's Node processes."""

    qos0: NodeProcess
    qos1: NodeProcess
    retainer: NodeProcess
    subscriber: NodeProcess
    stayers: list[NodeProcess]
    uplink: NodeProcess
    churners: NodeProcess

    def receiving(self) -> list[NodeProcess]:
        """Every process with browsers in the rooms."""
        return [*self.stayers, self.uplink, self.churners]


def room_names(load: Load) -> list[str]:
    return [f"soak-{i}" for i in range(load.rooms)]


def device_topics(load: Load) -> tuple[list[str], list[str]]:
    rooms = room_names(load)
    qos0 = [f"rooms/{rooms[i % load.rooms]}/dev-{i}" for i in range(load.devices_qos0)]
    qos1 = [
        f"rooms/{rooms[i % load.rooms]}/dev-{i}"
        for i in range(load.devices_qos0, load.devices_qos0 + load.devices_qos1)
    ]
    return qos0, qos1


def retained_topics(load: Load) -> list[str]:
    rooms = room_names(load)
    step = max(1, load.rooms // max(1, load.retained_topics))
    return [
        f"rooms/{rooms[(k * step) % load.rooms]}/thermostat-{k}/state"
        for k in range(load.retained_topics)
    ]


async def start_fleet(run: Run, load: Load, max_seconds: float) -> tuple[Fleet, dict[str, Any]]:
    """Devices, the MQTT subscriber and every browser, all connected and joined."""
    rooms = room_names(load)
    limit = {"max_seconds": int(max_seconds)}
    qos0 = await run.devices(load.devices_qos0, config={**limit, "qos": 0})
    qos1 = await run.devices(load.devices_qos1, config={**limit, "qos": 1})
    retainer = await run.devices(max(1, load.retained_topics), config={**limit, "qos": 1})
    subscriber = await run.devices(1, subscribe=["rooms/+/gateway"], role="receivers", config=limit)
    setups = {}
    stayers, setups["staying"] = await run.browsers(
        [room for room in rooms for _ in range(load.browsers_per_room)], config=limit
    )
    uplinks, setups["sending"] = await run.browsers(
        [rooms[i % load.rooms] for i in range(load.uplink_browsers)],
        processes=1,
        role="load",
        config=limit,
    )
    churners, setups["coming_and_going"] = await run.browsers(
        [rooms[-1 - i % load.rooms] for i in range(load.churn_browsers)],
        processes=1,
        role="load",
        config={**limit, "track_seq": True, "concurrency": 8},
    )
    for name, setup in setups.items():
        if setup["failed"]:
            raise HarnessError(
                f"{setup['failed']} of {setup['connections']} {name} browsers could not join: "
                f"{setup['errors']}"
            )
    fleet = Fleet(qos0, qos1, retainer, subscriber, stayers, uplinks[0], churners[0])
    return fleet, setups


async def _reports(node: NodeProcess, steps: Sequence[int]) -> list[dict[str, Any]]:
    """Each step's record from ``node``, one request at a time (its events share one queue)."""
    return [await node.request({"cmd": "report", "step": s}, "report", 30) for s in steps]


async def prefill(soak: Soak, run: Run, fleet: Fleet) -> dict[str, Any]:
    """Fill every room's Redis window (the last 1,000 messages) before the load starts, so that
    what the window legitimately holds is there from the first sample on."""
    rooms = room_names(soak.load)
    total = soak.prefill * len(rooms)
    duration = total / PREFILL_RATE
    began = time.monotonic()
    command = {
        "cmd": "send",
        "step": PREFILL_STEP,
        "rate": PREFILL_RATE,
        "duration": duration,
        "size": soak.load.payload_bytes,
        "topics": [f"rooms/{room}/prefill" for room in rooms],
    }
    sent = await fleet.qos0.request(command, "sent", duration * 3 + SEND_SLACK_SECONDS)
    await run.quiet(fleet.receiving(), settle=2.0)
    delivered = 0
    for node in fleet.receiving():
        delivered += sum(int(r["count"]) for r in await _reports(node, [PREFILL_STEP]))
    return {
        "messages_per_room": soak.prefill,
        "sent": int(sent["sent"]),
        "deliveries": delivered,
        "seconds": round(time.monotonic() - began, 1),
    }


class Rounds:
    """The steady load, round after round; round r's deliveries are read in round r + 1."""

    def __init__(self, soak: Soak, fleet: Fleet, sampler: Sampler) -> None:
        self.soak = soak
        self.fleet = fleet
        self.sampler = sampler
        self.qos0_topics, self.qos1_topics = device_topics(soak.load)
        self.retained = retained_topics(soak.load)
        self.sent: dict[int, dict[str, int]] = {}  # round -> sent per source, until reported
        self.lag: dict[int, float] = {}  # round -> the senders' worst lag behind schedule, ms

    @staticmethod
    def steps(r: int) -> dict[str, int]:
        base = r * 10
        return {"qos0": base + 1, "qos1": base + 2, "retained": base + 3, "uplink": base + 4}

    def _send(self, step: int, rate: float, **extra: Any) -> dict[str, Any]:
        command = {
            "cmd": "send",
            "step": step,
            "rate": rate,
            "duration": self.soak.interval,
            "size": self.soak.load.payload_bytes,
        }
        command.update(extra)
        return command

    async def _request(
        self, node: NodeProcess, command: dict[str, Any], event: str
    ) -> dict[str, Any]:
        return await node.request(command, event, self.soak.interval * 3 + SEND_SLACK_SECONDS)

    async def run_round(self, r: int) -> None:
        load, fleet, steps = self.soak.load, self.fleet, self.steps(r)
        previous = list(self.steps(r - 1).values()) if r - 1 in self.sent else []

        async def uplink() -> dict[str, Any]:
            rate = load.uplink_browsers * load.uplink_rate
            sent = await self._request(fleet.uplink, self._send(steps["uplink"], rate), "sent")
            self._count_other(await _reports(fleet.uplink, previous))
            return sent

        async def churn() -> dict[str, Any]:
            command = {"cmd": "churn", "count": load.churn_per_round, "resume": True}
            churned = await self._request(fleet.churners, command, "churned")
            self._count_other(await _reports(fleet.churners, previous))
            return churned

        qos0, qos1, retained, uplinked, churned = await asyncio.gather(
            self._request(
                fleet.qos0,
                self._send(
                    steps["qos0"], load.devices_qos0 * load.device_rate, topics=self.qos0_topics
                ),
                "sent",
            ),
            self._request(
                fleet.qos1,
                self._send(
                    steps["qos1"], load.devices_qos1 * load.device_rate, topics=self.qos1_topics
                ),
                "sent",
            ),
            self._request(
                fleet.retainer,
                self._send(
                    steps["retained"],
                    len(self.retained) / self.soak.interval,
                    topics=self.retained,
                    retain=True,
                ),
                "sent",
            ),
            uplink(),
            churn(),
        )
        totals = self.soak.totals
        self.lag[r] = max(float(m["lag_max_ms"]) for m in (qos0, qos1, retained, uplinked))
        self.sent[r] = {
            "qos0": int(qos0["sent"]),
            "qos1": int(qos1["sent"]),
            "retained": int(retained["sent"]),
            "uplink": int(uplinked["sent"]),
        }
        totals.device_sent += self.sent[r]["qos0"] + self.sent[r]["qos1"]
        totals.retained_sent += self.sent[r]["retained"]
        totals.uplink_sent += self.sent[r]["uplink"]
        totals.reconnects = int(churned["reconnects"])
        totals.resumed = int(churned["resumed"])
        totals.replayed = int(churned["replayed"])
        totals.gaps = int(churned["gaps"])
        totals.reconnect_failed = int(churned["failed"])
        if churned["errors"]:
            totals.errors = [*totals.errors, *churned["errors"]][-10:]
        totals.rounds = r
        if r - 1 in self.sent:
            await self.report(r - 1)

    def _count_other(self, reports: list[dict[str, Any]]) -> None:
        self.soak.totals.other_deliveries += sum(int(r["count"]) for r in reports)

    async def report(self, r: int) -> None:
        """Round ``r``'s deliveries: to the staying browsers and to the MQTT subscriber."""
        sent = self.sent.pop(r)
        steps = self.steps(r)
        per_stayer = await asyncio.gather(
            *(_reports(node, list(steps.values())) for node in self.fleet.stayers)
        )
        (uplinked,) = await _reports(self.fleet.subscriber, [steps["uplink"]])
        latency = Latency()
        by_source = {source: Latency() for source in steps}
        delivered = duplicates = closed = 0
        for reports in per_stayer:
            for source, report in zip(steps, reports, strict=True):
                latency.add(report["latency"])
                by_source[source].add(report["latency"])
                delivered += int(report["count"])
                duplicates += int(report["duplicates"])
            closed += int(reports[-1]["closed"])  # so far, in that process
        expected = sum(sent.values()) * self.soak.load.browsers_per_room
        totals = self.soak.totals
        totals.expected += expected
        totals.delivered += delivered
        totals.duplicates += duplicates
        totals.server_closed = closed
        totals.uplink_expected += sent["uplink"]
        totals.uplink_delivered += int(uplinked["count"])
        p99 = latency.percentile_ms(0.99)
        self.sampler.latest_p99 = p99
        self.soak.rounds.append(
            {
                "round": r,
                "sent": sum(sent.values()),
                "expected": expected,
                "delivered": delivered,
                "uplink_to_mqtt": int(uplinked["count"]),
                "p50_ms": latency.percentile_ms(0.5),
                "p99_ms": p99,
                "max_ms": latency.max_ms(),
                "p99_ms_by_source": {k: v.percentile_ms(0.99) for k, v in by_source.items()},
                "sender_lag_max_ms": round(self.lag.pop(r), 1),
            }
        )

    async def finish(self) -> None:
        """The last round's deliveries, after a moment for late ones."""
        await asyncio.sleep(DRAIN_SECONDS)
        for r in sorted(self.sent):
            previous = list(self.steps(r).values())
            self._count_other(await _reports(self.fleet.uplink, previous))
            self._count_other(await _reports(self.fleet.churners, previous))
            await self.report(r)


# The verdicts.


def judge(series: Series, samples: Sequence[dict[str, Any]], run_s: float) -> dict[str, Any]:
    """Start, end, extremes and trend of one series, and whether it grows (see `RULE`)."""
    during = [s for s in samples if s["phase"] != "prefill" and s.get(series.key) is not None]
    measured = [s for s in during if s["phase"] == "measured"]
    result: dict[str, Any] = {"series": series.key, "title": series.title, "unit": series.unit}
    if not during:
        return {**result, "verdict": "unknown", "why": "no samples"}
    values = [float(s[series.key]) for s in during]
    result.update(start=values[0], end=values[-1], min=min(values), max=max(values))
    if len(measured) < 3:
        return {**result, "verdict": "unknown", "why": "fewer than 3 samples after the warm-up"}
    times = [float(s["t"]) for s in measured]
    points = [float(s[series.key]) for s in measured]
    mean = statistics.fmean(points)
    slope = statistics.linear_regression(times, points).slope if len(set(times)) > 1 else 0.0
    drift = slope * run_s
    allowed = max(GROWTH_SHARE * mean, series.floor)
    result.update(
        mean=round(mean, 3),
        trend_per_hour=round(slope * 3600, 3),
        drift_over_run=round(drift, 3),
        allowed=round(allowed, 3),
        verdict="grows" if drift > allowed else "flat",
    )
    return result


def verdicts(soak: Soak, series: Sequence[Series] = SERIES) -> list[dict[str, Any]]:
    return [judge(one, soak.samples, soak.load_s) for one in series]


# The report.


def write_results(
    soak: Soak,
    out: Path,
    judged: list[dict[str, Any]] | None = None,
    raw: list[dict[str, Any]] | None = None,
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    document = {
        "meta": soak.meta,
        "minutes": soak.minutes,
        "interval_s": soak.interval,
        "warmup_s": soak.warmup_s,
        "load": asdict(soak.load),
        "rule": RULE,
        "marks_note": MARKS_NOTE,
        "totals": asdict(soak.totals),
        "verdicts": judged or [],
        "raw_redis": raw or [],
        "rounds": soak.rounds,
        "samples": soak.samples,
    }
    path = out / "soak.json"
    path.with_suffix(".json.tmp").write_text(json.dumps(document, indent=1) + "\n")
    path.with_suffix(".json.tmp").replace(path)


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and unit == "MiB":
        return f"{value:,.1f}"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.2f}".rstrip("0").rstrip(".")
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _share(part: int, whole: int) -> str:
    return f"{part / whole:.3%}" if whole else "-"


def _cores(samples: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Average cores per role over the load (prefill excluded)."""
    roles: dict[str, list[float]] = {}
    for sample in samples:
        if sample["phase"] == "prefill" or "cores" not in sample:
            continue
        for role, cores in sample["cores"].items():
            roles.setdefault(role, []).append(cores)
        roles.setdefault("background", []).append(sample.get("background_cores", 0.0))
    return {role: round(statistics.fmean(v), 3) for role, v in roles.items() if v}


def _table(rows: list[dict[str, Any]], minutes: float, *, verdicts: bool) -> list[str]:
    head = f"| series | start | end | min | max | trend per hour | drift over {minutes:g} min |"
    rule = "|---|---:|---:|---:|---:|---:|---:|"
    if verdicts:
        head, rule = head + " allowed | verdict |", rule + "---:|---|"
    lines = [head, rule]
    for v in rows:
        unit = v["unit"]
        cells = [
            f"{v['title']} ({unit})",
            *(_fmt(v.get(k), unit) for k in ("start", "end", "min", "max", "trend_per_hour")),
            _fmt(v.get("drift_over_run"), unit),
        ]
        if verdicts:
            cells += [_fmt(v.get("allowed"), unit), f"**{v['verdict']}**"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _md_head(soak: Soak) -> list[str]:
    meta = soak.meta
    machine, source = meta.get("machine", {}), meta.get("source", {})
    changes = source.get("uncommitted_changes") or []
    state = (
        f", with uncommitted changes in {', '.join(f'`{c}`' for c in changes)}" if changes else ""
    )
    during = [s for s in soak.samples if s["phase"] != "prefill"]
    lasted = during[-1]["t"] / 60 if during else 0.0
    lines = [
        f"# Soak: the gateway under mixed load for {soak.minutes:g} minutes",
        "",
        f"Commit `{source.get('commit', 'unknown')[:12]}`{state}; {machine.get('cpus', '?')} "
        f"cores ({machine.get('cpu_model', 'unknown')}); started {meta.get('started', '?')}. "
        f"The load ran {lasted:.1f} min, sampled every {soak.interval:g} s "
        f"({len(soak.samples)} samples); the first {soak.warmup_s / 60:g} min are the warm-up.",
    ]
    if meta.get("prefill"):
        prefill = meta["prefill"]
        lines[-1] += (
            f" Before it, every room's Redis window (its last {HISTORY_WINDOW:,} messages) was "
            f"filled: {prefill['sent']:,} messages at {PREFILL_RATE:g} msg/s, "
            f"{prefill['seconds']:g} s."
        )
    if meta.get("interrupted"):
        lines.append("\n**The run was interrupted**: what follows covers the part that ran.")
    if meta.get("error"):
        lines.append(f"\n**The run failed**: `{meta['error'].splitlines()[0][:300]}`")
    lines += ["", "## Load", "", *(f"- {item}" for item in soak.load.describe(soak.interval))]
    return lines


def _md_flow(soak: Soak) -> list[str]:
    t = soak.totals
    lines = [
        "",
        "## What flowed",
        "",
        "| | sent | expected | delivered | delivered share |",
        "|---|---:|---:|---:|---:|",
        f"| messages to the staying browsers | {t.sent:,} | {t.expected:,} | {t.delivered:,} "
        f"| {_share(t.delivered, t.expected)} |",
        f"| browser messages out to MQTT | {t.uplink_sent:,} | {t.uplink_expected:,} "
        f"| {t.uplink_delivered:,} | {_share(t.uplink_delivered, t.uplink_expected)} |",
        "",
        f"Sent: {t.device_sent:,} device messages, {t.retained_sent:,} retained ones, "
        f"{t.uplink_sent:,} from browsers; each should reach the "
        f"{soak.load.browsers_per_room} staying browsers of its room. Duplicates: "
        f"{t.duplicates:,}. Staying browsers the server closed: {t.server_closed:,}. Deliveries "
        f"to the other browsers: {t.other_deliveries:,}. Reconnects: {t.reconnects:,} "
        f"({t.resumed:,} with `?since=`, whose welcomes replayed {t.replayed:,} missed messages; "
        f"{t.gaps:,} reported a gap); {t.reconnect_failed:,} failed.",
    ]
    p99s = [r["p99_ms"] for r in soak.rounds if r["p99_ms"] is not None]
    if p99s:
        lag = max(r["sender_lag_max_ms"] for r in soak.rounds)
        lines[-1] += (
            f" Latency to the staying browsers, p99 of each round: median "
            f"{statistics.median(p99s):g} ms, worst {max(p99s):g} ms (the senders were at most "
            f"{lag:g} ms behind their schedule)."
        )
    cores = _cores(soak.samples)
    if cores:
        ours = sum(v for k, v in cores.items() if k != "background")
        parts = ", ".join(f"{k} {v:.2f}" for k, v in cores.items() if k != "background")
        lines[-1] += (
            f" CPU, average cores: {parts} (together {ours:.2f}); other processes on the "
            f"machine: {cores.get('background', 0.0):.2f}."
        )
    if t.errors:
        lines.append(f"Errors seen: {'; '.join(f'`{e[:200]}`' for e in t.errors[-5:])}")
    return lines


def _md_marks(soak: Soak, raw: list[dict[str, Any]]) -> list[str]:
    marks = soak.meta.get("marks") or {}
    load = soak.load
    qos1_rate = load.devices_qos1 * load.device_rate + load.retained_topics / soak.interval
    lines = ["", "### Redis and the QoS 1 marks", "", MARKS_NOTE]
    if marks.get("bytes_per_mark") is not None:
        level = qos1_rate * MARKS_TTL_SECONDS
        lines[-1] += (
            f" Here: deleting the {marks['marks']:,} marks freed {marks['freed_mib']:g} MiB, "
            f"{marks['bytes_per_mark']:g} bytes each; at {qos1_rate:g} QoS 1 messages/s they "
            f"would level off near {level:,.0f} keys, about "
            f"{level * marks['bytes_per_mark'] / MIB:,.0f} MiB."
        )
    return [*lines, "", *_table(raw, soak.minutes, verdicts=False)]


def _md_families(soak: Soak) -> list[str]:
    families = soak.meta.get("redis_families") or []
    if not families:
        return []
    lines = [
        "",
        "### Redis keys at the end, before the marks were deleted",
        "",
        "| key family | keys | with an expiry | longest TTL left |",
        "|---|---:|---:|---:|",
    ]
    for family in families[:12]:
        ttl = family.get("max_ttl_s")
        lines.append(
            f"| `{family['family']}` | {family['keys']:,} | {family['expiring']:,} | "
            f"{'-' if ttl is None else f'{ttl:,} s'} |"
        )
    return lines


def write_markdown(
    soak: Soak, out: Path, judged: list[dict[str, Any]], raw: list[dict[str, Any]]
) -> None:
    growing = [v["title"] for v in judged if v["verdict"] == "grows"]
    verdict = f"grows: {', '.join(growing)}" if growing else "flat"
    if not growing and any(v["verdict"] == "unknown" for v in judged):
        verdict = "unknown (too few samples after the warm-up)"
    lines = [
        *_md_head(soak),
        *_md_flow(soak),
        "",
        "## Memory and descriptors",
        "",
        RULE,
        "",
        *_table(judged, soak.minutes, verdicts=True),
        "",
        f"Verdict: **{verdict}**.",
        *_md_marks(soak, raw),
        *_md_families(soak),
        "",
        "![RSS, descriptors and Redis memory over the run](soak.png)",
        "",
    ]
    (out / "soak.md").write_text("\n".join(lines))


PANELS = (
    ("daphne RSS (MiB)", ("daphne_rss_mib",)),
    ("bridge worker RSS (MiB)", ("bridge_rss_mib",)),
    ("Mosquitto RSS (MiB)", ("mosquitto_rss_mib",)),
    ("Redis RSS (MiB)", ("redis_rss_mib", "redis_rss_net_mib")),
    ("open file descriptors", ("daphne_fds", "bridge_fds", "mosquitto_fds")),
    ("Redis used_memory (MiB)", ("redis_used_memory_mib", "redis_used_memory_net_mib")),
)
LABELS = {
    "redis_rss_mib": "as sampled",
    "redis_rss_net_mib": "without the QoS 1 marks",
    "redis_used_memory_mib": "as sampled",
    "redis_used_memory_net_mib": "without the QoS 1 marks",
}


def _trend_line(axis: Any, samples: Sequence[dict[str, Any]], key: str, per_hour: float) -> None:
    """The fitted line over the measured part (through its centroid, as least squares is)."""
    measured = [(s["t"] / 60, s[key]) for s in samples if s["phase"] == "measured" and key in s]
    if len(measured) < 2:
        return
    mid_x = statistics.fmean(m for m, _ in measured)
    mid_y = statistics.fmean(v for _, v in measured)
    ends = [measured[0][0], measured[-1][0]]
    axis.plot(ends, [mid_y + per_hour / 60 * (x - mid_x) for x in ends], "k--", lw=0.8)


def write_plot(soak: Soak, out: Path, judged: list[dict[str, Any]]) -> None:
    """RSS of each process, descriptors and Redis memory over time, one panel each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = soak.samples
    if not samples:
        return
    by_key = {v["series"]: v for v in judged}
    figure, axes = plt.subplots(3, 2, figsize=(12, 10), sharex=True)
    for axis, (title, keys) in zip(axes.flat, PANELS, strict=True):
        shown: list[float] = []
        for key in keys:
            points = [(s["t"] / 60, s[key]) for s in samples if s.get(key) is not None]
            if not points:
                continue
            verdict = by_key.get(key, {})
            label = LABELS.get(key, key.split("_")[0])
            if verdict:
                label += f": {verdict['verdict']}"
                if "trend_per_hour" in verdict:
                    _trend_line(axis, samples, key, verdict["trend_per_hour"])
            axis.plot([x for x, _ in points], [y for _, y in points], label=label, lw=1.2)
            shown += [y for _, y in points]
        axis.axvspan(min(0.0, samples[0]["t"] / 60), soak.warmup_s / 60, color="0.9", zorder=0)
        axis.set_title(title, fontsize=10)
        if "descriptors" in title or not shown:
            axis.set_ylim(bottom=0)
        else:  # memory: zoomed in, padded by what the rule allows, so a drift shows to scale
            allowed = max(float(by_key.get(k, {}).get("allowed") or 0.0) for k in keys)
            pad = max(allowed, 0.1 * (max(shown) - min(shown)))
            axis.set_ylim(max(0.0, min(shown) - pad), max(shown) + pad)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8, loc="lower right")
    marks = [(s["t"] / 60, s["redis_marks"]) for s in samples if "redis_marks" in s]
    if marks:
        twin = axes.flat[-1].twinx()
        twin.plot([x for x, _ in marks], [y for _, y in marks], color="tab:red", lw=0.8)
        twin.set_ylabel("QoS 1 marks (red, keys)", fontsize=8)
        twin.set_ylim(bottom=0)
    for axis in axes[-1]:
        axis.set_xlabel("minutes since the load began (grey: prefill and warm-up)")
    figure.suptitle(
        f"Soak: {soak.minutes:g} min of mixed load (dashed: the trend after the warm-up)",
        fontsize=11,
    )
    figure.tight_layout()
    figure.savefig(out / "soak.png", dpi=80)
    plt.close(figure)


def write_report(soak: Soak, out: Path) -> list[dict[str, Any]]:
    """soak.json, soak.md and soak.png; the judged series' verdicts."""
    add_net_series(soak)
    judged, raw = verdicts(soak), verdicts(soak, RAW_SERIES)
    write_results(soak, out, judged, raw)
    write_markdown(soak, out, judged, raw)
    write_plot(soak, out, judged)
    return judged


def rewrite_report(out: Path) -> int:
    """soak.md and soak.png again from ``out/soak.json`` (the verdicts judged again): 0 when
    every series is flat, 1 when one grows."""
    document = json.loads((out / "soak.json").read_text())
    meta = document["meta"]
    soak = Soak(
        load=Load(**document["load"]),
        minutes=document["minutes"],
        interval=document["interval_s"],
        warmup_s=document["warmup_s"],
        prefill=(meta.get("prefill") or {}).get("messages_per_room", 0),
        meta=meta,
        totals=Totals(**document["totals"]),
        samples=document["samples"],
        rounds=document["rounds"],
    )
    judged = write_report(soak, out)
    return EXIT_GROWS if any(v["verdict"] == "grows" for v in judged) else 0


# The run.


@contextlib.contextmanager
def _stop_on_signals(task: "asyncio.Task[Any]") -> Iterator[None]:
    """SIGINT and SIGTERM cancel the run (once): it then stops what it started and reports."""
    loop = asyncio.get_running_loop()
    fired: list[int] = []

    def cancel(signum: int) -> None:
        if not fired:
            fired.append(signum)
            print(f"\nsignal {signum}: stopping the processes, then writing the report", flush=True)
            task.cancel()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, cancel, signum)
    try:
        yield
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


async def _start_system(system: GatewaySystem) -> Endpoint:
    """Start the system in a thread; if the run is cancelled meanwhile, let the start finish
    (so that stopping it stops everything it started)."""
    starting = asyncio.ensure_future(asyncio.to_thread(system.start))
    try:
        return await asyncio.shield(starting)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await starting
        raise


async def _stop(task: "asyncio.Task[None] | None") -> None:
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _load(soak: Soak, run: Run, fleet: Fleet, sampler: Sampler, out: Path) -> None:
    """The prefill, then the rounds of steady load, sampled all along."""
    sampling = None
    try:
        if soak.prefill:
            print(f"prefill: {soak.prefill:,} messages into each room ...", flush=True)
            limit = math.ceil(prefill_seconds(soak) * 3 / soak.interval) + 10
            sampling = asyncio.create_task(sampler.run(soak.interval, limit))
            soak.meta["prefill"] = await prefill(soak, run, fleet)
            await _stop(sampling)
        rounds = Rounds(soak, fleet, sampler)
        count = max(1, round(soak.load_s / soak.interval))
        print(f"load: {count} rounds of {soak.interval:g} s, sampled every round", flush=True)
        soak.begin_load()
        sampling = asyncio.create_task(sampler.run(soak.interval, 2 * count + 10))
        for r in range(1, count + 1):
            await rounds.run_round(r)
            if not run.system.alive():
                raise HarnessError("a gateway process exited during the soak")
            if r % 6 == 0:
                _progress(soak)
                write_results(soak, out)
        await rounds.finish()
        await _stop(sampling)
        await sampler.sample()  # the last one, with every round reported
    finally:
        await _stop(sampling)


def prefill_seconds(soak: Soak) -> float:
    return soak.prefill * soak.load.rooms / PREFILL_RATE


async def soak_run(soak: Soak, out: Path) -> None:
    """Start the gateway and the load, sample until the time is up, stop everything."""
    raw = raw_dir(out)
    workdir = raw / "gateway"
    system = make_system("gateway", workdir, raw)
    assert isinstance(system, GatewaySystem)
    run: Run | None = None
    sampler: Sampler | None = None
    try:
        print("starting Mosquitto, Redis, the bridge worker and daphne ...", flush=True)
        run = Run(system, await _start_system(system), workdir)
        # The Node processes exit on their own, well after the run should have ended.
        most = soak.load_s + prefill_seconds(soak) * 3 + 900
        fleet, soak.meta["setup"] = await start_fleet(run, soak.load, max_seconds=most)
        nodes = run.nodes
        sampler = Sampler(soak, system, lambda: [Proc(n.role, n.name, n.pid) for n in nodes])
        await run.quiet(fleet.receiving())  # the joins' presence frames
        await _load(soak, run, fleet, sampler, out)
    finally:
        if sampler is not None:
            with contextlib.suppress(redis.RedisError, OSError):
                soak.meta["redis_families"] = await asyncio.to_thread(redis_families, sampler.redis)
                soak.meta["marks"] = await asyncio.to_thread(measure_marks, sampler.redis)
            sampler.close()
        if run is not None:
            await run.close()
        await asyncio.to_thread(system.stop)
        soak.meta["server_errors"] = system.log_errors()


def _progress(soak: Soak) -> None:
    last = soak.samples[-1] if soak.samples else {}
    totals = soak.totals
    print(
        f"  {soak.t() / 60:5.1f} min: daphne {last.get('daphne_rss_mib', 0):.1f} MiB "
        f"{last.get('daphne_fds')} fds, bridge {last.get('bridge_rss_mib', 0):.1f} MiB, "
        f"Redis {last.get('redis_used_memory_mib', 0):.1f} MiB {last.get('redis_keys')} keys "
        f"({last.get('redis_marks')} marks); delivered {totals.delivered:,}/{totals.expected:,}, "
        f"reconnects {totals.reconnects:,}",
        flush=True,
    )


async def run_soak(
    minutes: float,
    out: Path,
    *,
    machine: dict[str, Any],
    warmup: float | None = None,
    interval: float | None = None,
    load: Load | None = None,
) -> int:
    """The soak, end to end: 0 when every series is flat, 1 when one grows, 2 on a failure,
    130 when interrupted (the report then covers what ran)."""
    if not minutes > 0:
        raise SystemExit("--minutes must be above 0")
    soak = Soak(
        load=load or Load(),
        minutes=minutes,
        interval=interval or default_interval(minutes),
        warmup_s=(default_warmup(minutes) if warmup is None else warmup) * 60,
        prefill=HISTORY_WINDOW if minutes >= PREFILL_MIN_MINUTES else 0,
        meta={
            "started": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": machine,
            "source": source_state(),
        },
    )
    task = asyncio.current_task()
    assert task is not None
    status = 0
    with _stop_on_signals(task):
        try:
            await soak_run(soak, out)
        except asyncio.CancelledError:
            soak.meta["interrupted"] = True
            status = EXIT_INTERRUPTED
        except (SystemFailed, HarnessError, TimeoutError, RuntimeError, OSError) as exc:
            soak.meta["error"] = f"{type(exc).__name__}: {exc}"[:3000]
            print(f"the soak failed: {soak.meta['error']}", flush=True)
            status = EXIT_FAILED
    judged = write_report(soak, out)
    for v in judged:
        print(
            f"  {v['title']:<24} {_fmt(v.get('start'), v['unit']):>9} -> "
            f"{_fmt(v.get('end'), v['unit']):>9} {v['unit']:<4}  trend "
            f"{_fmt(v.get('trend_per_hour'), v['unit'])}/h  {v['verdict']}"
        )
    totals = soak.totals
    print(
        f"sent {totals.sent:,}, delivered {totals.delivered:,} of {totals.expected:,} expected; "
        f"{totals.reconnects:,} reconnects; report: {out / 'soak.md'}",
        flush=True,
    )
    if status:
        return status
    return EXIT_GROWS if any(v["verdict"] == "grows" for v in judged) else 0
