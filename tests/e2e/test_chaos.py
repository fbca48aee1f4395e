"""Faults the gateway promises to survive, each with what a user would see.

`make chaos` runs these with ``CHAOS_SCALE=5`` (longer outages and streams) together with
the bridge's crash and restart scenarios, and prints the ledger: what each scenario sent,
lost and repeated, and how long the gateway took to recover.
"""

import asyncio
import contextlib
import itertools
import json
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from tests.conftest import gateway_on_sentinels, start_gateway
from tests.support.clients import mqtt_client, mqtt_messages_within, recv_json, ws_connect
from tests.support.devices import Device
from tests.support.ledger import SCALE, Ledger
from tests.support.processes import (
    Mosquitto,
    Redis,
    wait_for,
)
from tests.support.proxy import Proxy

RECOVERY_DEADLINE = 5.0  # seconds after a fault ends by which every socket receives or is closed


@dataclass
class Watched:
    """One browser's view of a numbered stream: when each number arrived, and how it ended."""

    ws: ClientConnection
    key: str = "n"  # where the message carries its number
    arrivals: list[tuple[float, int]] = field(default_factory=list)
    seqs: list[int] = field(default_factory=list)  # the room's seq of each, as it arrived
    closed: tuple[float, int | None] | None = None
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def read(self) -> None:
        try:
            while True:
                frame = await recv_json(self.ws, 3600)
                if frame.get("type") == "message" and isinstance(frame["message"], dict):
                    self.arrivals.append((time.monotonic(), frame["message"][self.key]))
                    self.seqs.append(frame["seq"])
                    self.arrived.set()
        except ConnectionClosed as closed:
            code = closed.rcvd.code if closed.rcvd is not None else None
            self.closed = (time.monotonic(), code)

    def counts(self) -> Counter[int]:
        return Counter(n for _, n in self.arrivals)

    def first_after(self, moment: float) -> float | None:
        return next((t for t, _ in self.arrivals if t >= moment), None)

    async def wait_first_after(self, moment: float, within: float) -> float | None:
        """When the first message after ``moment`` arrived, waiting up to ``within`` s for it."""
        deadline = moment + within
        while (first := self.first_after(moment)) is None and time.monotonic() < deadline:
            self.arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.arrived.wait(), deadline - time.monotonic())
        return first


async def publish_numbered(
    device: Device, topics: list[str], stop: asyncio.Event, sent_at: list[float] | None = None
) -> int:
    """A numbered message to each topic every 50 ms until ``stop``; how many numbers went out.

    ``sent_at``, when given, gets each number's send time.
    """
    n = 0
    while not stop.is_set():
        for topic in topics:
            device.publish(topic, json.dumps({"n": n}).encode())
        if sent_at is not None:
            sent_at.append(time.monotonic())
        n += 1
        await asyncio.sleep(0.05)
    return n


async def test_a_redis_restart_leaves_every_socket_receiving_or_closed_with_1012(
    tmp_path: Path, broker: Mosquitto, database_url: str, ledger: Ledger
) -> None:
    for part in ("redis", "gateway"):
        (tmp_path / part).mkdir()
    redis = Redis(tmp_path / "redis").start()
    gateway = start_gateway(tmp_path / "gateway", broker, redis, database_url)
    rooms = ["north", "south"]
    try:
        async with contextlib.AsyncExitStack() as stack:
            watched = [
                Watched(await stack.enter_async_context(ws_connect(gateway.ws, room)))
                for room in rooms
                for _ in range(2)
            ]
            readers = [asyncio.create_task(w.read()) for w in watched]
            stop = asyncio.Event()
            with Device(broker.port, "chaos-redis") as device:
                sending = asyncio.create_task(
                    publish_numbered(device, [f"rooms/{r}/meter" for r in rooms], stop)
                )
                await asyncio.sleep(2)
                await asyncio.to_thread(redis.stop)  # all of Redis's state is gone
                await asyncio.sleep(1.0 * SCALE)
                await asyncio.to_thread(redis.start)
                back = time.monotonic()
                await asyncio.sleep(RECOVERY_DEADLINE + 3)
                stop.set()
                sent = await sending
            await asyncio.sleep(3)  # late deliveries
            for reader in readers:
                reader.cancel()
        recoveries = []
        for w in watched:
            first = w.first_after(back)
            if first is not None:
                recoveries.append(first - back)
            else:  # not receiving: then it must have been told, with 1012
                assert w.closed is not None, "a socket neither receives nor was closed"
                assert w.closed[1] == 1012
                recoveries.append(max(0.0, w.closed[0] - back))
        row = ledger.record(
            "a Redis restart: every socket receives again or is closed with 1012 within 5 s",
            f"Redis down {1.0 * SCALE:.0f} s, 4 sockets in 2 rooms",
            sent,
            [w.counts() for w in watched if w.closed is None],
            max(recoveries),
        )
        assert max(recoveries) <= RECOVERY_DEADLINE
        # What Redis held is gone, but history has it: each open socket is caught up.
        assert (row.lost, row.duplicated) == (0, 0)
    finally:
        gateway.stop()
        redis.stop()


async def test_the_bridge_waits_quietly_for_a_broker_that_is_down_and_recovers(
    tmp_path: Path, redis_server: Redis, database_url: str, ledger: Ledger
) -> None:
    for part in ("broker", "gateway"):
        (tmp_path / part).mkdir()
    broker = Mosquitto(tmp_path / "broker").start()
    gateway = start_gateway(tmp_path / "gateway", broker, redis_server, database_url)
    outage = 10.0 * SCALE
    try:
        async with ws_connect(gateway.ws, "backoff") as ws:
            watched = Watched(ws)
            reader = asyncio.create_task(watched.read())
            await asyncio.to_thread(broker.stop)
            before = gateway.worker.cpu_seconds()
            await asyncio.sleep(outage)
            idle_cpu = gateway.worker.cpu_seconds() - before
            await asyncio.to_thread(broker.start)
            back = time.monotonic()
            stop = asyncio.Event()
            with Device(broker.port, "chaos-backoff") as device:
                sending = asyncio.create_task(
                    publish_numbered(device, ["rooms/backoff/meter"], stop)
                )
                # The bridge's next attempt comes within its backoff cap (10 s) of the return.
                first = await watched.wait_first_after(back, 15)
                stop.set()
                sent = await sending
            await asyncio.sleep(2)
            reader.cancel()
        ledger.record(
            "the bridge does not spin while the broker is down, and recovers when it returns",
            f"broker (no persistence) down {outage:.0f} s, bridge used {idle_cpu:.2f} CPU s; "
            "sent from its return, lost until the bridge subscribed",
            sent,
            [watched.counts()],
            None if first is None else first - back,
        )
        assert idle_cpu < 0.05 * outage  # waiting costs under 5% of a core
        assert first is not None, "nothing reached the room after the broker came back"
    finally:
        gateway.stop()
        broker.stop()


async def test_sockets_that_outlive_the_group_expiry_keep_receiving(
    tmp_path: Path, broker: Mosquitto, redis_server: Redis, database_url: str, ledger: Ledger
) -> None:
    expiry = 6
    gateway = start_gateway(
        tmp_path, broker, redis_server, database_url, CHANNEL_GROUP_EXPIRY=str(expiry)
    )
    lifetime = 3 * expiry * SCALE
    try:
        async with ws_connect(gateway.ws, "expiry") as ws:
            watched = Watched(ws)
            reader = asyncio.create_task(watched.read())
            stop = asyncio.Event()
            with Device(broker.port, "chaos-expiry") as device:
                sending = asyncio.create_task(
                    publish_numbered(device, ["rooms/expiry/meter"], stop)
                )
                await asyncio.sleep(lifetime)
                stop.set()
                sent = await sending
            await asyncio.sleep(2)
            reader.cancel()
        row = ledger.record(
            "sockets that outlive the channel layer's group expiry keep receiving",
            f"group expiry {expiry} s, socket open {lifetime} s",
            sent,
            [watched.counts()],
        )
        assert (row.lost, row.duplicated, watched.closed) == (0, 0, None)
    finally:
        gateway.stop()


def caught_up(watched: Watched, n: int) -> float:
    """When ``n`` arrived at ``watched`` (never: infinity)."""
    return next((t for t, seen in watched.arrivals if seen == n), math.inf)


async def test_a_slow_link_to_the_broker_delays_messages_but_loses_and_reorders_none(
    tmp_path: Path, broker: Mosquitto, redis_server: Redis, database_url: str, ledger: Ledger
) -> None:
    link = Proxy(broker.port).start()
    gateway = start_gateway(
        tmp_path, broker, redis_server, database_url, MQTT_URL=f"mqtt://127.0.0.1:{link.port}"
    )
    slow = 5.0 * SCALE
    delay, rate = 0.3, 4096.0  # each way; about twice what the stream needs
    try:
        async with (
            ws_connect(gateway.ws, "slowlink") as first,
            ws_connect(gateway.ws, "slowlink") as second,
            mqtt_client(broker.port) as listener,
        ):
            await listener.subscribe("rooms/slowlink/gateway", qos=1)
            watched = [Watched(first), Watched(second)]
            readers = [asyncio.create_task(w.read()) for w in watched]
            stop, sent_at = asyncio.Event(), []
            with Device(broker.port, "chaos-slowlink") as device:
                sending = asyncio.create_task(
                    publish_numbered(device, ["rooms/slowlink/meter"], stop, sent_at)
                )
                await asyncio.sleep(2)
                link.degrade(delay=delay, rate=rate)
                slow_from = len(sent_at)
                for n in range(10):  # browsers talk to devices through the slow link too
                    await first.send(json.dumps({"message": f"up {n}"}))
                    await asyncio.sleep(slow / 10)
                link.restore()
                restored, fast_from = time.monotonic(), len(sent_at)
                await asyncio.sleep(3)
                stop.set()
                sent = await sending
            uplink = await mqtt_messages_within(listener, 5)  # late deliveries arrive meanwhile
            for reader in readers:
                reader.cancel()
        row = ledger.record(
            "a slow link to the broker delays messages but loses, repeats and reorders none",
            f"bridge-broker link +{delay * 1000:.0f} ms and {rate / 1024:.0f} KiB/s each way "
            f"for {slow:.0f} s, 2 sockets; recovery: until what it delayed has arrived",
            sent,
            [w.counts() for w in watched],
            max(caught_up(w, fast_from - 1) - restored for w in watched),
        )
        assert (row.lost, row.duplicated) == (0, 0)
        for w in watched:
            numbers = [n for _, n in w.arrivals]
            assert numbers == sorted(numbers), "a socket saw the stream out of order"
            latency = {n: t - sent_at[n] for t, n in w.arrivals}
            # The fault was real: messages sent on the slow link took at least its delay...
            assert max(latency[n] for n in range(slow_from, fast_from)) >= delay
            # ...and the gateway caught up once it was fast again.
            assert latency[sent - 1] < delay
        ups = [json.loads(m.payload)["message"] for m in uplink]  # type: ignore[arg-type]
        assert ups == [f"up {n}" for n in range(10)], "each reaches MQTT once, in order"
    finally:
        gateway.stop()
        link.stop()


def strictly_increasing(values: list[int]) -> bool:
    return all(a < b for a, b in itertools.pairwise(values))


async def test_a_redis_failover_loses_repeats_and_renumbers_nothing(
    tmp_path: Path, broker: Mosquitto, database_url: str, ledger: Ledger
) -> None:
    """A Redis master, its replica and three Sentinels; two daphne processes and a bridge
    worker follow the master through the Sentinels. The master is SIGKILLed while devices
    stream at 200 msg/s into two rooms; a Sentinel promotes the replica."""
    down_after_ms = 1000
    replicated, gateway = gateway_on_sentinels(
        tmp_path, broker, database_url, "gw-failover", down_after_ms=down_after_ms
    )
    rooms, rate, total = ["east", "west"], 100.0, int(800 * SCALE)  # per room
    try:
        gateway.start()
        second = gateway.start_web()
        async with contextlib.AsyncExitStack() as stack:
            watched = [
                Watched(await stack.enter_async_context(ws_connect(base, room)), key="seq")
                for room in rooms
                for base in (gateway.ws, f"ws://127.0.0.1:{second}")
            ]
            readers = [asyncio.create_task(w.read()) for w in watched]
            # A browser that leaves before the failover and resumes after it.
            away = await stack.enter_async_context(ws_connect(gateway.ws, rooms[0]))
            away_watched = Watched(away, key="seq")
            away_reader = asyncio.create_task(away_watched.read())
            devices = [
                stack.enter_context(Device(broker.port, f"failover-{room}")) for room in rooms
            ]
            sending = [
                asyncio.create_task(
                    asyncio.to_thread(device.publish_sequence, f"rooms/{room}/meter", total, rate)
                )
                for device, room in zip(devices, rooms, strict=True)
            ]
            await asyncio.sleep(1.5)
            await away.close()
            await away_reader
            await asyncio.sleep(0.5)
            killed = time.monotonic()
            old_master = await asyncio.to_thread(replicated.kill_master)
            await asyncio.to_thread(
                wait_for,
                lambda: replicated.master_port() not in (None, old_master),
                "a Sentinel to promote the replica",
                30,
            )
            promoted = time.monotonic() - killed
            firsts = [
                await w.wait_first_after(killed + 0.2, down_after_ms / 1000 + 10) for w in watched
            ]
            await asyncio.gather(*sending)
            for device in devices:
                assert device.wait_acked(device.published, timeout=30)
            await asyncio.sleep(3)  # late deliveries, and copies, would show here
            for reader in readers:
                reader.cancel()
            last_seen = away_watched.seqs[-1]
            last_n = away_watched.arrivals[-1][1]
            async with ws_connect(gateway.ws, rooms[0], since=last_seen) as back:
                welcome = back.welcome  # type: ignore[attr-defined]
        recovery = max((f - killed) for f in firsts if f is not None) if all(firsts) else None
        row = ledger.record(
            "a Redis failover: browsers receive again, QoS 1 device messages are neither lost "
            "nor repeated, seqs only increase",
            f"master SIGKILLed at {2 * rate:.0f} msg/s into 2 rooms, 2 daphne, "
            f"replica promoted after {promoted:.1f} s",
            total,
            [w.counts() for w in watched],
            recovery,
        )
        assert recovery is not None, "a browser received nothing after the failover"
        assert recovery <= down_after_ms / 1000 + 10
        assert (row.lost, row.duplicated) == (0, 0)
        for w in watched:
            assert w.closed is None
            assert strictly_increasing(w.seqs), "a room's seq went back or repeated"
        # Resuming across the failover: exactly what was missed, or told of a gap.
        numbers = [m["message"]["seq"] for m in welcome["messages"]]
        seqs = [m["seq"] for m in welcome["messages"]]
        assert strictly_increasing([last_seen, *seqs])
        if not welcome["gap"]:
            assert numbers == list(range(last_n + 1, total))
    finally:
        gateway.stop()
        replicated.stop()


async def test_the_broker_redelivers_into_the_promoted_replica_once(
    tmp_path: Path, broker: Mosquitto, database_url: str, ledger: Ledger
) -> None:
    """The bridge worker dies with the Redis master: the broker redelivers what the worker had
    not acknowledged, with the ids of its first deliveries, to the restarted worker, which
    writes to the promoted replica. Browsers see each message once, in increasing seqs."""
    replicated, gateway = gateway_on_sentinels(tmp_path, broker, database_url, "gw-redeliver")
    rate, total = 100.0, int(500 * SCALE)
    try:
        gateway.start()
        async with contextlib.AsyncExitStack() as stack:
            watched = [
                Watched(await stack.enter_async_context(ws_connect(gateway.ws, "south")), key="seq")
                for _ in range(2)
            ]
            readers = [asyncio.create_task(w.read()) for w in watched]
            device = stack.enter_context(Device(broker.port, "redeliver-meter"))
            sending = asyncio.create_task(
                asyncio.to_thread(device.publish_sequence, "rooms/south/meter", total, rate)
            )
            await asyncio.sleep(2)
            killed = time.monotonic()
            gateway.worker.kill()  # its unacknowledged messages stay with the broker
            old_master = await asyncio.to_thread(replicated.kill_master)
            await asyncio.to_thread(
                wait_for,
                lambda: replicated.master_port() not in (None, old_master),
                "a Sentinel to promote the replica",
                30,
            )
            await asyncio.to_thread(gateway.start_worker, 0)  # its session resumes
            first = await watched[0].wait_first_after(killed + 0.2, 20)
            await sending
            assert device.wait_acked(device.published, timeout=30)
            await asyncio.sleep(3)
            for reader in readers:
                reader.cancel()
        row = ledger.record(
            "a Redis failover with the bridge killed too: the broker's redeliveries reach the "
            "promoted replica once",
            "master and bridge worker SIGKILLed together at 100 msg/s, worker restarted",
            total,
            [w.counts() for w in watched],
            None if first is None else first - killed,
        )
        assert first is not None
        assert (row.lost, row.duplicated) == (0, 0)
        for w in watched:
            assert strictly_increasing(w.seqs), "a room's seq went back or repeated"
    finally:
        gateway.stop()
        replicated.stop()
