"""One system under load: its harness processes, and the measurement of one step."""

import asyncio
import contextlib
import itertools
import os
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from benchmarks.measure import (
    CpuWindow,
    Latency,
    Proc,
    busiest_harness_process,
    by_role,
    harness_cores,
    harness_limited,
    per_thousand,
)
from benchmarks.nodeproc import HarnessError, NodeProcess
from benchmarks.systems import Endpoint, System

KNEE_RATIO = 0.999  # delivered share a step needs to count below the knee
KNEE_P99_MS = 100.0  # and its p99 latency
DRAIN_MAX_SECONDS = 5.0  # how long a step waits for late deliveries after the last send
DRAIN_STALL_SECONDS = 1.0  # no new delivery for this long: the rest is lost
POLL_SECONDS = 0.1
QUIET_MAX_SECONDS = 120.0  # the most a scenario waits for a storm of frames (presence) to pass
CONNECT_TIMEOUT_SECONDS = 300.0  # the most a set of receivers may take to join
HANDSHAKES_IN_FLIGHT = 32  # browsers join this many at a time (all processes together)


def chunks(items: Sequence[str], parts: int) -> list[list[str]]:
    """``items`` dealt into ``parts`` lists of nearly equal length (none empty)."""
    parts = max(1, min(parts, len(items)))
    return [list(items[i::parts]) for i in range(parts)]


def receiver_processes(connections: int) -> int:
    """How many receive processes hold ``connections`` sockets (each stays well below a core)."""
    if connections <= 20:
        return 1
    return 2 if connections <= 2000 else 3


class Run:
    """A started system and the load and receive processes of one scenario."""

    def __init__(self, system: System, endpoint: Endpoint, log_dir: Path) -> None:
        self.system = system
        self.endpoint = endpoint
        self.log_dir = log_dir
        self.nodes: list[NodeProcess] = []
        self._names = itertools.count(1)
        self._steps = itertools.count(1)

    async def _start(
        self, script: str, config: dict[str, Any], role: str, within: float
    ) -> tuple[NodeProcess, dict[str, Any]]:
        name = f"{role}-{next(self._names)}"
        node = NodeProcess(name, script, config, role, self.log_dir)
        self.nodes.append(node)
        ready = await node.start(within)
        return node, ready

    async def browsers(
        self,
        rooms: Sequence[str],
        *,
        processes: int | None = None,
        role: str = "receivers",
        subscribe: bool = True,
        concurrency: int = HANDSHAKES_IN_FLIGHT,
        handshake_timeout: float = 60.0,
        config: dict[str, Any] | None = None,
    ) -> tuple[list[NodeProcess], dict[str, Any]]:
        """One browser per entry of ``rooms``, spread over a few processes, all joined;
        ``config`` adds to each process's configuration (see ``load/ws-clients.js``).

        Returns the processes and the setup: connected, failed, handshake latencies.
        """
        processes = processes or receiver_processes(len(rooms))
        parts = chunks(rooms, processes)
        endpoint = self.endpoint
        configs = [
            {
                "mode": endpoint.ws_mode,
                "url": endpoint.ws_url,
                "origin": endpoint.origin,
                "rooms": part,
                "welcome": endpoint.welcome,
                "subscribe": "rooms/{room}/#" if subscribe else None,
                "publish": "rooms/{room}/gateway",
                "concurrency": max(1, concurrency // len(parts)),
                "timeout_ms": int(handshake_timeout * 1000),
                **(config or {}),
            }
            for part in parts
        ]
        began = time.monotonic()
        started = await asyncio.gather(
            *(self._start("ws-clients.js", c, role, CONNECT_TIMEOUT_SECONDS) for c in configs)
        )
        joined = time.monotonic() - began
        handshake = Latency()
        errors: list[str] = []
        for _, ready in started:
            handshake.add(ready["handshake"])
            errors.extend(ready["errors"])
        setup = {
            "connections": len(rooms),
            "connected": sum(ready["connected"] for _, ready in started),
            "failed": sum(ready["failed"] for _, ready in started),
            "errors": errors[:5],
            "handshake_p50_ms": handshake.percentile_ms(0.5),
            "handshake_p99_ms": handshake.percentile_ms(0.99),
            "handshake_max_ms": handshake.max_ms(),
            "join_seconds": round(joined, 1),
        }
        return [node for node, _ in started], setup

    async def devices(
        self,
        clients: int,
        *,
        subscribe: Sequence[str] = (),
        role: str = "load",
        config: dict[str, Any] | None = None,
    ) -> NodeProcess:
        """``clients`` MQTT connections in one process; the first subscribes to ``subscribe``;
        ``config`` adds to the process's configuration (``qos``, ``max_seconds``)."""
        settings = {
            "url": self.endpoint.mqtt_url,
            "clients": clients,
            "subscribe": list(subscribe),
            **(config or {}),
        }
        node, ready = await self._start("mqtt-clients.js", settings, role, 120)
        if ready["failed"]:
            raise HarnessError(f"{ready['failed']} MQTT clients failed: {ready['errors']}")
        return node

    async def frames(self, receivers: Sequence[NodeProcess]) -> int:
        stats = await asyncio.gather(
            *(r.request({"cmd": "stats", "step": 0}, "stats", 30) for r in receivers)
        )
        return sum(int(s["frames"]) for s in stats)

    async def quiet(self, receivers: Sequence[NodeProcess], settle: float = 1.0) -> float:
        """Wait until the receivers get no frames for ``settle`` s (presence storms, backlogs);
        the seconds until the last frame came."""
        began = time.monotonic()
        deadline = began + QUIET_MAX_SECONDS
        last, since = -1, began
        while time.monotonic() < deadline:
            now = await self.frames(receivers)
            if now != last:
                last, since = now, time.monotonic()
            elif time.monotonic() - since >= settle:
                break
            await asyncio.sleep(POLL_SECONDS * 2)
        return round(since - began, 1)

    async def _received(self, receivers: Sequence[NodeProcess], step: int) -> int:
        stats = await asyncio.gather(
            *(r.request({"cmd": "stats", "step": step}, "stats", 30) for r in receivers)
        )
        return sum(int(s["count"]) for s in stats)

    async def _drain(self, receivers: Sequence[NodeProcess], step: int, expected: int) -> bool:
        """Wait for late deliveries; whether every expected one arrived."""
        deadline = time.monotonic() + DRAIN_MAX_SECONDS
        last, since = -1, time.monotonic()
        while time.monotonic() < deadline:
            count = await self._received(receivers, step)
            if count >= expected:
                return True
            if count != last:
                last, since = count, time.monotonic()
            elif time.monotonic() - since >= DRAIN_STALL_SECONDS:
                return False
            await asyncio.sleep(POLL_SECONDS)
        return False

    async def step(
        self,
        *,
        sender: NodeProcess,
        receivers: Sequence[NodeProcess],
        rate: float,
        duration: float,
        per_message: float,
        size: int = 200,
        send: dict[str, Any] | None = None,
        during: Callable[[int], Coroutine[Any, Any, dict[str, Any]]] | None = None,
    ) -> dict[str, Any]:
        """Send ``rate`` messages/s for ``duration`` s; each should reach ``per_message``
        receivers. The step's record: rates, delivery, latency, CPU, drops."""
        step = next(self._steps)
        drops_before = self.system.drops()
        harness = [Proc(n.role, n.name, n.pid) for n in self.nodes]
        harness.append(Proc("controller", "controller", os.getpid()))
        window = CpuWindow([*self.system.procs(), *harness])
        command = {"cmd": "send", "step": step, "rate": rate, "duration": duration, "size": size}
        command.update(send or {})
        window.start()
        began = time.monotonic()
        side = asyncio.create_task(during(step)) if during is not None else None
        try:
            sent = await sender.request(command, "sent", duration * 3 + 30)
            expected = round(sent["sent"] * per_message)
            drained = await self._drain(receivers, step, expected)
            observed = await side if side is not None else {}
        finally:
            if side is not None and not side.done():
                side.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await side
        used = window.stop()
        wall = time.monotonic() - began
        reports = [
            await r.request({"cmd": "report", "step": step}, "report", 30) for r in receivers
        ]
        drops = _delta(drops_before, self.system.drops())
        if not self.system.alive():
            raise HarnessError("a server process exited during the step")

        latency = Latency()
        for report in reports:
            latency.add(report["latency"])
        delivered = sum(int(r["count"]) for r in reports)
        last_us = max((float(r["last_us"]) for r in reports), default=0.0)
        # The schedule's own length (a whole number of messages), or longer if deliveries lag.
        scheduled = int(sent["sent"]) / rate
        span = max(scheduled, (last_us - float(sent["start_us"])) / 1e6) if delivered else scheduled
        roles = by_role(used)
        system_roles = {p.role for p in self.system.procs()}
        busiest = busiest_harness_process(used, wall)
        together = harness_cores(used, wall)
        record: dict[str, Any] = {
            "step": step,
            "rate_msgs": rate,
            "offered": round(rate * per_message, 1),
            "duration_s": duration,
            "wall_s": round(wall, 1),  # sending, then waiting for late deliveries
            "sent": int(sent["sent"]),
            "expected": expected,
            "delivered": delivered,
            "duplicates": sum(int(r["duplicates"]) for r in reports),
            "ratio": round(min(1.0, delivered / expected), 5) if expected else 0.0,
            "delivered_per_s": round(delivered / span, 1),
            "p50_ms": latency.percentile_ms(0.5),
            "p99_ms": latency.percentile_ms(0.99),
            "max_ms": latency.max_ms(),
            "sender_lag_max_ms": round(float(sent["lag_max_ms"]), 2),
            "drained": drained,
            "cpu_s": roles,
            "cpu_per_1k": per_thousand(roles, delivered),
            "system_cpu_per_1k": per_thousand(
                {"all": sum(s for r, s in roles.items() if r in system_roles)}, delivered
            )["all"],
            "busiest_harness_core": busiest,
            "harness_cores": together,
            "harness_limited": harness_limited(busiest, together),
            "background_cores": round(window.background_seconds / wall, 3),
            "kernel_irq_cores": round(window.kernel_seconds / wall, 3),
            "drops": None if drops is None else sum(drops.values()),
            "drops_by": drops,
            "closed_sockets": sum(int(r.get("closed", 0)) for r in reports),
        }
        record["ok"] = bool(
            record["ratio"] >= KNEE_RATIO
            and record["p99_ms"] is not None
            and record["p99_ms"] <= KNEE_P99_MS
        )
        record.update(observed)
        return record

    async def warm_up(
        self, *, sender: NodeProcess, receivers: Sequence[NodeProcess], rate: float, **kw: Any
    ) -> None:
        """A short step, not recorded: the path works end to end, caches are warm."""
        record = await self.step(sender=sender, receivers=receivers, rate=rate, duration=1.0, **kw)
        if record["delivered"] == 0:
            raise HarnessError("nothing was delivered in the warm-up step")
        await self.quiet(receivers, settle=0.5)

    async def close(self) -> None:
        await asyncio.gather(*(node.stop() for node in self.nodes), return_exceptions=True)
        self.nodes.clear()


def _delta(
    before: dict[str, float] | None, after: dict[str, float] | None
) -> dict[str, float] | None:
    if before is None or after is None:
        return None
    changed = {k: v - before.get(k, 0.0) for k, v in after.items()}
    return {k: v for k, v in changed.items() if v}


async def ramp(
    run_step: Callable[[float], Awaitable[dict[str, Any]]],
    offered: Sequence[float],
    *,
    settle: Callable[[], Awaitable[object]] | None = None,
    failures_to_stop: int = 2,
) -> tuple[list[dict[str, Any]], float | None]:
    """Steps at rising offered rates until ``failures_to_stop`` fail in a row; the knee is the
    highest offered rate of a step that delivered at least 99.9% with p99 <= 100 ms."""
    steps: list[dict[str, Any]] = []
    knee: float | None = None
    failing = 0
    for index, rate in enumerate(offered):
        record = await run_step(rate)
        steps.append(record)
        if record["ok"]:
            failing = 0
            knee = max(knee or 0.0, float(record["offered"]))
        else:
            failing += 1
            if failing >= failures_to_stop:
                break
        if settle is not None and index + 1 < len(offered):
            await settle()  # the next step starts without the backlog of this one
    return steps, knee
