"""The scenarios: what load each system gets, and what is recorded."""

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

from benchmarks.harness import Run, ramp, receiver_processes
from benchmarks.measure import CpuWindow, Latency, by_role
from benchmarks.nodeproc import HarnessError
from benchmarks.slowclient import SlowClient

MB = 1024 * 1024
MIN_MESSAGES_PER_STEP = 4  # fewer would make a step's percentiles meaningless


@dataclass(frozen=True)
class Plan:
    """Sizes, rates and durations of a run (the full run, or `QUICK`)."""

    step_seconds: float = 4.0
    fanout_sizes: tuple[int, ...] = (10, 100, 1000, 10_000)
    fanout_deliveries: tuple[int, ...] = (250, 500, 1000, 2000, 5000, 10000, 20000, 40000, 80000)
    ingest_rooms: int = 100
    ingest_rates: tuple[int, ...] = (50, 100, 250, 500, 1000, 2000, 4000, 8000, 16000)
    iot_devices: int = 100
    iot_room_size: int = 10
    iot_seconds: float = 5.0
    uplink_browsers: int = 100
    uplink_rates_each: tuple[float, ...] = (1.0, 2.0, 5.0, 10.0)  # msg/s from each browser
    idle_counts: tuple[int, ...] = (1000, 5000)
    idle_hold_seconds: float = 3.0
    slow_room_size: int = 10
    slow_rate: float = 50.0
    slow_payload: int = 3072
    slow_pause_seconds: float = 60.0
    slow_resume_seconds: float = 5.0
    join_count: int = 10_000
    reconnect_count: int = 10_000
    reconnect_room_size: int = 100
    reconnect_wait_seconds: float = 300.0


FULL = Plan()
QUICK = replace(
    FULL,
    step_seconds=2.0,
    fanout_sizes=(10,),
    fanout_deliveries=(500, 1000),
    ingest_rooms=10,
    ingest_rates=(50, 100),
    iot_devices=10,
    iot_seconds=3.0,
    uplink_browsers=10,
    uplink_rates_each=(5.0, 10.0),
    idle_counts=(200,),
    idle_hold_seconds=2.0,
    slow_room_size=5,
    slow_pause_seconds=5.0,
    slow_resume_seconds=2.0,
    join_count=200,
    reconnect_count=200,
    reconnect_room_size=50,
    reconnect_wait_seconds=60.0,
)


async def fanout(run: Run, size: int, plan: Plan) -> dict[str, Any]:
    """One room of ``size`` browsers, one device publishing at rising rates."""
    room = "fanout"
    receivers, setup = await run.browsers([room] * size)
    if setup["connected"] == 0:
        raise HarnessError(f"no browser could join: {setup['errors']}")
    setup["settle_seconds"] = await run.quiet(receivers)  # the joins' presence frames
    device = await run.devices(1)
    members = setup["connected"]
    topics = {"topics": [f"rooms/{room}/sensor-1"]}

    async def step(offered: float) -> dict[str, Any]:
        return await run.step(
            sender=device,
            receivers=receivers,
            rate=offered / size,
            duration=plan.step_seconds,
            per_message=members,
            send=topics,
        )

    offered = [
        d for d in plan.fanout_deliveries if d / size * plan.step_seconds >= MIN_MESSAGES_PER_STEP
    ]
    await run.warm_up(
        sender=device, receivers=receivers, rate=offered[0] / size, per_message=members, send=topics
    )
    steps, knee = await ramp(step, offered, settle=lambda: run.quiet(receivers, settle=0.5))
    return {"setup": setup, "steps": steps, "knee": knee}


async def ingest(run: Run, _group: object, plan: Plan) -> dict[str, Any]:
    """Many rooms of one browser each; devices publish round the rooms at rising rates."""
    rooms = [f"ingest-{i}" for i in range(plan.ingest_rooms)]
    receivers, setup = await run.browsers(rooms)
    await run.quiet(receivers)
    device = await run.devices(10)
    per_message = setup["connected"] / len(rooms)
    topics = {"topics": [f"rooms/{room}/device-{i}" for i, room in enumerate(rooms)]}

    async def step(rate: float) -> dict[str, Any]:
        return await run.step(
            sender=device,
            receivers=receivers,
            rate=rate,
            duration=plan.step_seconds,
            per_message=per_message,
            send=topics,
        )

    await run.warm_up(
        sender=device,
        receivers=receivers,
        rate=plan.ingest_rates[0],
        per_message=per_message,
        send=topics,
    )
    steps, knee = await ramp(
        step, plan.ingest_rates, settle=lambda: run.quiet(receivers, settle=0.5)
    )
    return {"setup": setup, "steps": steps, "knee": knee}


async def iot(run: Run, _group: object, plan: Plan) -> dict[str, Any]:
    """Devices at 1 message/s each, every device into its own room of browsers."""
    rooms = [f"iot-{i}" for i in range(plan.iot_devices)]
    receivers, setup = await run.browsers([r for r in rooms for _ in range(plan.iot_room_size)])
    await run.quiet(receivers)
    devices = await run.devices(plan.iot_devices)
    per_message = setup["connected"] / len(rooms)
    topics = {"topics": [f"rooms/{room}/device-{i}" for i, room in enumerate(rooms)]}
    rate = float(plan.iot_devices)  # one message a second from each device
    await run.warm_up(
        sender=devices, receivers=receivers, rate=rate, per_message=per_message, send=topics
    )
    record = await run.step(
        sender=devices,
        receivers=receivers,
        rate=rate,
        duration=plan.iot_seconds,
        per_message=per_message,
        send=topics,
    )
    return {"setup": setup, "steps": [record]}


async def uplink(run: Run, _group: object, plan: Plan) -> dict[str, Any]:
    """Browsers send; one MQTT client subscribed to ``rooms/+/gateway`` receives."""
    rooms = [f"uplink-{i}" for i in range(plan.uplink_browsers)]
    subscriber = await run.devices(1, subscribe=["rooms/+/gateway"], role="receivers")
    # Browsers of the rooms' own WebSocket are in their rooms and get their messages back;
    # MQTT-over-WebSocket browsers only publish.
    senders, setup = await run.browsers(
        rooms, processes=1, role="load", subscribe=run.endpoint.ws_mode != "mqtt-ws"
    )
    if setup["connected"] == 0:
        raise HarnessError(f"no browser could join: {setup['errors']}")
    rates = [plan.uplink_browsers * each for each in plan.uplink_rates_each]

    async def step(rate: float) -> dict[str, Any]:
        return await run.step(
            sender=senders[0],
            receivers=[subscriber],
            rate=rate,
            duration=plan.step_seconds,
            per_message=1,
        )

    await run.warm_up(sender=senders[0], receivers=[subscriber], rate=rates[0], per_message=1)
    steps, knee = await ramp(step, rates, settle=lambda: run.quiet([subscriber], settle=0.5))
    return {"setup": setup, "steps": steps, "knee": knee}


async def idle(run: Run, counts: tuple[int, ...], plan: Plan) -> dict[str, Any]:
    """Browsers join rooms of ten and stay silent, until there are ``counts[0]``, then
    ``counts[1]``... of them: memory per connection, handshakes, idle CPU at each count."""
    warm, _ = await run.browsers(["idle-warm"] * 10)
    await run.quiet(warm)
    server_before, redis_before = run.system.server_rss(), run.system.redis_rss()
    held = list(warm)
    entries: list[dict[str, Any]] = []
    totals: dict[str, Any] = {"connections": 0, "connected": 0, "failed": 0, "errors": []}
    for count in sorted(counts):
        joined = totals["connections"]
        rooms = [f"idle-{i // 10}" for i in range(joined, count)]
        receivers, setup = await run.browsers(rooms, processes=receiver_processes(len(rooms)))
        held += receivers
        for key in ("connections", "connected", "failed"):
            totals[key] += setup[key]
        totals["errors"] = [*totals["errors"], *setup["errors"]][:5]
        await run.quiet(held)
        await asyncio.sleep(1.0)
        window = CpuWindow(run.system.procs())
        window.start()
        await asyncio.sleep(plan.idle_hold_seconds)
        idle_cpu = by_role(window.stop())
        server_after, redis_after = run.system.server_rss(), run.system.redis_rss()
        connected = max(1, totals["connected"])
        redis_delta = (
            None if redis_before is None or redis_after is None else redis_after - redis_before
        )
        entries.append(
            {
                "connections": count,
                "connected": totals["connected"],
                "server_rss_before_mb": round(server_before / MB, 1),
                "server_rss_after_mb": round(server_after / MB, 1),
                "server_kb_per_connection": round(
                    (server_after - server_before) / 1024 / connected, 1
                ),
                "redis_kb_per_connection": (
                    None if redis_delta is None else round(redis_delta / 1024 / connected, 2)
                ),
                "idle_cpu_share": {
                    role: round(s / plan.idle_hold_seconds, 3) for role, s in idle_cpu.items()
                },
                "handshakes": f"{joined + 1:,} to {count:,}",
                "handshake_p50_ms": setup["handshake_p50_ms"],
                "handshake_p99_ms": setup["handshake_p99_ms"],
            }
        )
    return {"setup": totals, "steps": [], "idle": entries}


async def slow(run: Run, _group: object, plan: Plan) -> dict[str, Any]:
    """A room where one browser stops reading for a while; the others should not suffer."""
    room = "slow"
    receivers, setup = await run.browsers([room] * (plan.slow_room_size - 1))
    stalled = SlowClient(run.endpoint, room)
    await stalled.connect()
    await run.quiet(receivers)
    device = await run.devices(1)
    topics = {"topics": [f"rooms/{room}/sensor-1"]}
    members = setup["connected"]
    await run.warm_up(
        sender=device,
        receivers=receivers,
        rate=plan.slow_rate,
        per_message=members,
        send=topics,
        size=plan.slow_payload,
    )
    pause = plan.slow_pause_seconds
    duration = pause + plan.slow_resume_seconds

    async def observe(step: int) -> dict[str, Any]:
        """Server memory every second; the stalled client reads again after ``pause`` s."""
        timeline: list[tuple[float, float]] = []
        began = time.monotonic()
        while (elapsed := time.monotonic() - began) < pause:
            timeline.append((round(elapsed, 1), round(run.system.server_rss() / MB, 1)))
            await asyncio.sleep(min(1.0, max(0.0, pause - elapsed)))
        resumed = await stalled.read_for(plan.slow_resume_seconds + 3.0, step)
        timeline.append(
            (round(time.monotonic() - began, 1), round(run.system.server_rss() / MB, 1))
        )
        return {"rss_timeline_mb": timeline, "stalled_client": resumed}

    try:
        record = await run.step(
            sender=device,
            receivers=receivers,
            rate=plan.slow_rate,
            duration=duration,
            per_message=members,
            size=plan.slow_payload,
            send=topics,
            during=observe,
        )
    finally:
        await stalled.close()
    rss = [mb for _, mb in record["rss_timeline_mb"]]
    record["server_rss_start_mb"], record["server_rss_peak_mb"] = rss[0], max(rss)
    return {"setup": setup, "steps": [record], "pause_s": pause}


async def join(run: Run, count: int, _plan: Plan) -> dict[str, Any]:
    """``count`` browsers join one room as fast as they can: the frames each gets until the
    room is quiet (its welcome and the presence of those after it), the seconds until every
    welcome came, and the server's memory per socket in one big room."""
    server_before = run.system.server_rss()
    receivers, setup = await run.browsers(["join"] * count)
    if setup["connected"] == 0:
        raise HarnessError(f"no browser could join: {setup['errors']}")
    quiet_after = await run.quiet(receivers)
    frames = await run.frames(receivers)
    server_after = run.system.server_rss()
    connected = setup["connected"]
    record = {
        "sockets": connected,
        "frames": frames,
        "frames_per_socket": round(frames / connected, 1),
        "welcomes_seconds": setup["join_seconds"],
        "quiet_after_seconds": quiet_after,
        "server_kb_per_socket": round((server_after - server_before) / 1024 / connected, 1),
        "server_rss_after_mb": round(server_after / MB, 1),
        "handshake_p50_ms": setup["handshake_p50_ms"],
        "handshake_p99_ms": setup["handshake_p99_ms"],
    }
    return {"setup": setup, "steps": [], "join": record}


# The room page's reconnection: a full-jitter wait that doubles from 0.5 s up to 10 s, and
# 15 s for a handshake before it tries again.
ROOM_PAGE_BACKOFF = {"base_ms": 500, "cap_ms": 10_000, "timeout_ms": 15_000}
DOWNTIME_STEP = 900  # the step number of what devices send while the server is down
EMPTY_TALLY: dict[str, Any] = {
    **dict.fromkeys(
        ("closed", "back", "given_up", "attempts", "failed", "busy", "replayed", "gaps"), 0
    ),
    "errors": [],
    "handshake": {},
    "away": {},
}


async def reconnect(run: Run, count: int, plan: Plan) -> dict[str, Any]:
    """``count`` browsers in rooms of ``reconnect_room_size``; the server restarts, and each
    comes back as the room page does, with ``?since=`` where the system resumes. Devices
    send one message into every room before and one while the server is down: a resumed
    welcome replays that one."""
    rooms = [f"back-{i // plan.reconnect_room_size}" for i in range(count)]
    config = {"track_seq": True, "reconnect": ROOM_PAGE_BACKOFF}
    receivers, setup = await run.browsers(rooms, config=config)
    if setup["connected"] == 0:
        raise HarnessError(f"no browser could join: {setup['errors']}")
    await run.quiet(receivers)
    names = sorted(set(rooms))
    resumes = run.endpoint.welcome  # a system that sends welcomes resumes from a seq
    device = await run.devices(1) if resumes else None
    topics = {"topics": [f"rooms/{room}/sensor-1" for room in names]}
    if device is not None:  # every socket sees a seq, to resume from
        per_message = setup["connected"] / len(names)
        rate = len(names)
        await run.warm_up(
            sender=device, receivers=receivers, rate=rate, per_message=per_message, send=topics
        )
    rss_before = run.system.server_rss()
    await asyncio.to_thread(run.system.stop_server)
    stopped = time.monotonic()
    sent = 0
    if device is not None:
        command = {"cmd": "send", "step": DOWNTIME_STEP, "rate": len(names), "duration": 1.0}
        sent = (await device.request({**command, "size": 200, **topics}, "sent", 60))["sent"]
    await asyncio.to_thread(run.system.start_server)
    started = time.monotonic()
    deadline = started + plan.reconnect_wait_seconds
    tallies: list[dict[str, Any]] = [EMPTY_TALLY] * len(receivers)
    unanswered = 0  # polls a receiver too busy to answer in time (its last answer stands)
    while True:
        answers = await asyncio.gather(
            *(r.request({"cmd": "reconnects"}, "reconnects", 30) for r in receivers),
            return_exceptions=True,
        )
        for k, answer in enumerate(answers):
            if isinstance(answer, HarnessError):
                unanswered += 1
            elif isinstance(answer, BaseException):
                raise answer
            else:
                tallies[k] = answer
        back = sum(int(t["back"]) for t in tallies)
        closed = sum(int(t["closed"]) for t in tallies)
        waiting = closed - back - sum(int(t["given_up"]) for t in tallies)
        if (closed and waiting <= 0) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    all_back = time.monotonic() - started
    handshake, away = Latency(), Latency()
    for tally in tallies:
        handshake.add(tally["handshake"])
        away.add(tally["away"])
    record = {
        "sockets": setup["connected"],
        "closed": closed,
        "back": back,
        "given_up": sum(int(t["given_up"]) for t in tallies),
        "still_away": max(0, waiting),
        "attempts": sum(int(t["attempts"]) for t in tallies),
        "refused_attempts": sum(int(t["failed"]) for t in tallies),
        # Of those, the ones the server answered "busy, come back in retry_after seconds".
        "busy_attempts": sum(int(t.get("busy", 0)) for t in tallies),
        "errors": [e for t in tallies for e in t["errors"]][:5],
        "unanswered_polls": unanswered,
        "server_down_seconds": round(started - stopped, 1),
        "all_back_seconds": round(all_back, 1),
        "away_p50_ms": away.percentile_ms(0.5),
        "away_p99_ms": away.percentile_ms(0.99),
        "handshake_p50_ms": handshake.percentile_ms(0.5),
        "handshake_p99_ms": handshake.percentile_ms(0.99),
        # A resumed welcome replays what was sent while the server was down, in its room.
        "replay_expected": round(sent * setup["connected"] / len(names)) if resumes else None,
        "replayed": sum(int(t["replayed"]) for t in tallies) if resumes else None,
        "gaps": sum(int(t["gaps"]) for t in tallies) if resumes else None,
        "server_rss_before_mb": round(rss_before / MB, 1),
        "server_rss_after_mb": round(run.system.server_rss() / MB, 1),
    }
    return {"setup": setup, "steps": [], "reconnect": record}


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    groups: Callable[[Plan], list[Any]]
    label: Callable[[Any], str]
    body: Callable[[Run, Any, Plan], Awaitable[dict[str, Any]]]
    # The systems it measures (None: all). The naive stack has no restart in the harness.
    systems: tuple[str, ...] | None = None


SCENARIOS = {
    s.name: s
    for s in (
        Scenario(
            "fanout",
            "Fan-out: one device, one room of N browsers",
            lambda p: list(p.fanout_sizes),
            lambda n: f"room of {n}",
            fanout,
        ),
        Scenario(
            "ingest",
            "Device ingest: one browser in each of many rooms",
            lambda p: [p.ingest_rooms],
            lambda n: f"{n} rooms",
            ingest,
        ),
        Scenario(
            "iot",
            "IoT mix: devices at 1 msg/s, each into a room of browsers",
            lambda p: [(p.iot_devices, p.iot_room_size)],
            lambda g: f"{g[0]} devices, rooms of {g[1]}",
            iot,
        ),
        Scenario(
            "uplink",
            "Uplink: browsers send, one MQTT subscriber receives",
            lambda p: [(p.uplink_browsers, p.uplink_rates_each)],
            lambda g: f"{g[0]} browsers at {g[1][0]:g} to {g[1][-1]:g} msg/s each",
            uplink,
        ),
        Scenario(
            "idle",
            "Idle connections held",
            lambda p: [p.idle_counts],
            lambda counts: " then ".join(f"{n:,}" for n in counts) + " sockets",
            idle,
        ),
        Scenario(
            "join",
            "Join storm: N browsers join one room at once",
            lambda p: [p.join_count],
            lambda n: f"{n:,} sockets",
            join,
        ),
        Scenario(
            "reconnect",
            "Reconnect storm: the server restarts under N browsers",
            lambda p: [p.reconnect_count],
            lambda n: f"{n:,} sockets",
            reconnect,
            systems=("mosquitto", "gateway", "gateway-uvicorn"),
        ),
        Scenario(
            "slow",
            "Slow consumer: one browser stops reading",
            lambda p: [p.slow_pause_seconds],
            lambda s: f"paused {s:g} s",
            slow,
        ),
    )
}
