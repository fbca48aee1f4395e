"""The bridge that loses nothing: crashes, restarts, scale-out, retained state, slow consumers."""

import asyncio
import contextlib
import json
import signal
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
from websockets.asyncio.client import ClientConnection

from tests.conftest import start_gateway
from tests.support.clients import (
    frames_within,
    mqtt_client,
    mqtt_messages_within,
    recv_json,
    ws_connect,
)
from tests.support.devices import Device
from tests.support.ledger import SCALE, Ledger
from tests.support.processes import Gateway, Mosquitto, Redis, http_get, wait_for
from tests.support.prometheus import parse_exposition, samples
from tests.support.proxy import Proxy

RULES = [
    {
        "name": "device-in",
        "topic": "rooms/{room}/{sender}/#",
        "room": "{room}",
        "sender": "{sender}",
    },
    {"name": "room-in", "topic": "rooms/{room}", "room": "{room}"},
    {
        "name": "gateway-out",
        "direction": "out",
        "room": "{room}",
        "publish_to": "rooms/{room}/gateway",
    },
    {
        "name": "packed-in",
        "topic": "packed/{room}/{sender}",
        "room": "{room}",
        "sender": "{sender}",
        "codec": "msgpack",
    },
    {"name": "raw-in", "topic": "raw/{room}", "room": "{room}", "codec": "binary"},
]


@contextlib.asynccontextmanager
async def bridge_statuses(broker: Mosquitto, gateway: Gateway) -> AsyncIterator[list[str]]:
    """The first worker's status as devices see it: "online", "stopped" or "lost", in order."""
    seen: list[str] = []
    client_id = f"{gateway.env['GATEWAY_ID']}-bridge-0"
    async with mqtt_client(broker.port) as watcher:
        await watcher.subscribe(f"gateways/{client_id}/status", qos=1)

        async def collect() -> None:
            async for message in watcher.messages:
                assert isinstance(message.payload, bytes)
                status = json.loads(message.payload)
                assert status["client_id"] == client_id
                seen.append("online" if status["online"] else status["reason"])

        task = asyncio.create_task(collect())
        try:
            await asyncio.to_thread(wait_for, lambda: seen == ["online"], "the bridge online", 10)
            yield seen
            await asyncio.sleep(1)  # a will is published as soon as the connection drops
        finally:
            task.cancel()


async def collect_sequence(
    sockets: list[ClientConnection], expected: int, within: float
) -> list[Counter[int]]:
    """Each socket's ``seq`` counts, once it has ``expected`` of them and a quiet second."""

    async def one(ws: ClientConnection) -> Counter[int]:
        seen: Counter[int] = Counter()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while len(seen) < expected and loop.time() < deadline:
            for frame in await frames_within(ws, 0.5):
                if frame.get("type") == "message" and isinstance(frame["message"], dict):
                    seen[frame["message"]["seq"]] += 1
        for frame in await frames_within(ws, 1.0):  # late copies would show here
            if frame.get("type") == "message" and isinstance(frame["message"], dict):
                seen[frame["message"]["seq"]] += 1
        return seen

    return list(await asyncio.gather(*(one(ws) for ws in sockets)))


def assert_exactly_once(counts: list[Counter[int]], expected: int) -> None:
    for seen in counts:
        missing = sorted(set(range(expected)) - set(seen))
        duplicated = sorted(n for n, c in seen.items() if c > 1)
        assert (missing, duplicated) == ([], []), (
            f"missing {missing[:20]}, duplicated {duplicated[:20]}"
        )


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    (tmp_path / "broker").mkdir()
    server = Mosquitto(tmp_path / "broker", persistence=True).start()
    yield server
    server.stop()


async def wait_for_state(gateway: Gateway, room: str, topic: str) -> None:
    """Until a browser joining ``room`` is given the state of ``topic`` (at most 15 s)."""
    for _ in range(30):
        async with ws_connect(gateway.ws, room) as probe:
            if any(s["topic"] == topic for s in probe.welcome["retained"]):  # type: ignore[attr-defined]
                return
        await asyncio.sleep(0.5)
    raise AssertionError(f"the state of {topic} never reached room {room}")


def gateway_for(
    tmp_path: Path, broker: Mosquitto, redis: Redis, database_url: str, workers: int = 1, **env: str
) -> Gateway:
    return start_gateway(
        tmp_path,
        broker,
        redis,
        database_url,
        workers=workers,
        BRIDGE_RULES=json.dumps(RULES),
        **env,
    )


async def stream_through(
    gateway: Gateway,
    broker: Mosquitto,
    room: str,
    disrupt: Callable[[], Awaitable[None]],
    *,
    total: int,
    rate: float,
    sockets: int = 1,
    device_port: int | None = None,
    devices: list[Device] | None = None,
) -> list[Counter[int]]:
    """Stream ``total`` numbered QoS 1 messages into ``room`` while ``disrupt`` runs.

    Returns what each of ``sockets`` browsers in the room received; ``devices``, if given,
    gets the device that streams, for ``disrupt`` to look at.
    """
    async with contextlib.AsyncExitStack() as stack:
        browsers = [
            await stack.enter_async_context(ws_connect(gateway.ws, room)) for _ in range(sockets)
        ]
        with Device(device_port or broker.port, f"{room}-device") as device:
            if devices is not None:
                devices.append(device)
            sending = asyncio.create_task(
                asyncio.to_thread(device.publish_sequence, f"rooms/{room}/meter", total, rate)
            )
            # Read while it streams, as browsers do: a socket left unread for long would fail
            # its keepalive and close, which is not the fault under test.
            collecting = asyncio.create_task(
                collect_sequence(browsers, total, within=total / rate + 60)
            )
            await disrupt()
            await sending
            return await collecting


async def test_crashing_the_bridge_five_times_loses_and_repeats_nothing(
    tmp_path: Path, broker: Mosquitto, redis_server: Redis, database_url: str, ledger: Ledger
) -> None:
    gateway = gateway_for(tmp_path, broker, redis_server, database_url)
    crashes, total = 5 * SCALE, 400 * SCALE

    async def crash() -> None:
        for _ in range(crashes):
            await asyncio.sleep(1.2)
            gateway.worker.kill()  # SIGKILL: no drain, no goodbye
            await asyncio.to_thread(gateway.start_worker, 0)

    try:
        async with bridge_statuses(broker, gateway) as statuses:
            counts = await stream_through(
                gateway, broker, "crash", crash, total=total, rate=40.0, sockets=2
            )
        ledger.record(
            "QoS 1 device to room loses nothing across bridge crashes",
            f"bridge SIGKILLed and restarted {crashes} times, 2 sockets",
            total,
            counts,
        )
        assert_exactly_once(counts, total)
        assert gateway.worker.log().count("subscribed to") >= crashes + 1
        # Devices saw each crash: the broker published the bridge's last will.
        assert statuses == ["online", *(["lost", "online"] * crashes)]
    finally:
        gateway.stop()


async def test_two_workers_share_the_load_and_a_killed_one_loses_nothing(
    tmp_path: Path, broker: Mosquitto, redis_server: Redis, database_url: str, ledger: Ledger
) -> None:
    gateway = gateway_for(tmp_path, broker, redis_server, database_url, workers=2)
    total = 1000
    try:
        async with (
            ws_connect(gateway.ws, "pair") as first,
            ws_connect(gateway.ws, "pair") as second,
        ):
            with Device(broker.port, "pair-device") as device:
                await asyncio.to_thread(device.publish_sequence, "rooms/pair/meter", total, 200.0)
                assert_exactly_once(await collect_sequence([first, second], total, 60), total)
                # Both workers took a share.
                for worker in gateway.workers:
                    assert "shared as $share/" in worker.log()
                sending = asyncio.create_task(
                    asyncio.to_thread(
                        device.publish_sequence, "rooms/pair/meter", total, 200.0, total
                    )
                )
                await asyncio.sleep(1.5)
                gateway.workers[1].kill()
                await asyncio.sleep(1.0)
                await asyncio.to_thread(gateway.start_worker, 1)  # its session resumes
                await sending
                counts = await collect_sequence([first, second], total, 60)
        shifted = [Counter({n - total: c for n, c in seen.items()}) for seen in counts]
        ledger.record(
            "QoS 1 device to room loses nothing when one of two workers dies",
            "one of two bridge workers SIGKILLed, restarted 1 s later",
            total,
            shifted,
        )
        assert_exactly_once(shifted, total)
    finally:
        gateway.stop()


async def test_a_broker_restart_with_persistence_loses_nothing(
    tmp_path: Path, broker: Mosquitto, redis_server: Redis, database_url: str, ledger: Ledger
) -> None:
    gateway = gateway_for(tmp_path, broker, redis_server, database_url)
    # Mosquitto 2.0 does not restore shared subscriptions from its store, so what devices
    # publish after a restart and before the bridge subscribes again is lost (README: What is
    # guaranteed). Here the device's link comes back once the bridge has: what it had sent
    # before the restart, and what it sends after, must all arrive.
    link = Proxy(broker.port).start()
    # A link of 100 ms each way, as a device's often is: messages are in flight at the cut.
    link.degrade(delay=0.1)
    devices: list[Device] = []
    in_flight: list[int] = []

    async def restart_broker() -> None:
        await asyncio.sleep(2)
        assert broker.process is not None
        link.cut()
        # What the device sent and was not told the broker has: it sends each again when its
        # link returns, and MQTT makes that a new message (README: What is guaranteed).
        in_flight.append(devices[0].unacknowledged())
        broker.process.stop()  # SIGTERM: Mosquitto saves its store
        assert broker.store.stat().st_size > 0, broker.process.log()
        await asyncio.sleep(1)
        broker.start()
        await asyncio.to_thread(
            wait_for, lambda: gateway.worker.log().count("subscribed to") >= 2, "resubscribed", 20
        )
        link.unblock()

    try:
        (seen,) = await stream_through(
            gateway,
            broker,
            "restart",
            restart_broker,
            total=300,
            rate=50.0,
            device_port=link.port,
            devices=devices,
        )
        row = ledger.record(
            "QoS 1 device to room loses nothing across a broker restart (persistence); "
            "a copy only of what the device had in flight",
            f"Mosquitto stopped mid-stream, started 1 s later; devices back after the bridge; "
            f"{in_flight[0]} in flight at the cut",
            300,
            [seen],
        )
        assert sorted(set(range(300)) - set(seen)) == []
        assert row.duplicated <= in_flight[0]
        # and each copy is a message the device did send again, never an older one
        assert all(count <= 2 for count in seen.values())
    finally:
        gateway.stop()
        link.stop()


async def test_a_device_that_names_its_messages_has_its_resends_dropped(
    tmp_path: Path, broker: Mosquitto, redis_server: Redis, database_url: str
) -> None:
    # A QoS 1 resend (its PUBACK was lost) is a new message to the broker; the id the device
    # gives it (the message-id user property) ties it to the first.
    gateway = gateway_for(tmp_path, broker, redis_server, database_url)

    def counted(name: str, **labels: str) -> int:
        families = parse_exposition(http_get(f"{gateway.http}/metrics")[1])
        return int(sum(sample.value for sample in samples(families, name, **labels)))

    try:
        async with ws_connect(gateway.ws, "named") as ws:
            with Device(broker.port, "named-device") as device:
                copies = counted("gateway_duplicates_removed_total", reason="redelivery")
                for n, name in enumerate(["reading-1", "reading-1", "reading-2", "reading-1"]):
                    device.publish("rooms/named/meter", b'{"v": %d}' % n, message_id=name)
                too_long = "x" * 65  # ignored (counted): the messages go through unchecked
                device.publish("rooms/named/meter", b'{"v": 4}', message_id=too_long)
                device.publish("rooms/named/meter", b'{"v": 4}', message_id=too_long)
                frames = await frames_within(ws, 2.0)
            assert [f["message"] for f in frames] == [{"v": 0}, {"v": 2}, {"v": 4}, {"v": 4}]
            # The worker's counters reach /metrics with its next heartbeat.
            await asyncio.to_thread(
                wait_for,
                lambda: counted("gateway_mqtt_message_ids_ignored_total") == 2,
                "the ignored ids counted",
                15,
            )
            assert counted("gateway_duplicates_removed_total", reason="redelivery") == copies + 2
    finally:
        gateway.stop()


async def test_retained_state_reaches_a_browser_that_joins_later_once(
    tmp_path: Path, broker: Mosquitto, redis_server: Redis, database_url: str
) -> None:
    with Device(broker.port, "thermostat") as device:
        # Retained before the gateway starts: learnt when the bridge subscribes.
        device.publish("rooms/den/boiler", b'{"on": false}', retain=True)
        assert device.wait_acked(1)
        gateway = gateway_for(tmp_path, broker, redis_server, database_url)
        try:
            await wait_for_state(gateway, "den", "rooms/den/boiler")
            async with ws_connect(gateway.ws, "den") as present:
                (state,) = present.welcome["retained"]  # type: ignore[attr-defined]
                assert (state["topic"], state["retained"]) == ("rooms/den/boiler", True)
                assert state["message"] == {"on": False}
                device.publish("rooms/den/thermostat", b'{"set": 20}', retain=True)
                live = await recv_json(present)
                assert live["message"] == {"set": 20}
                assert "retained" not in live
                await asyncio.sleep(0.5)
                async with ws_connect(gateway.ws, "den") as joiner:
                    states = joiner.welcome["retained"]  # type: ignore[attr-defined]
                    assert await frames_within(joiner, 1.0) == []  # the states came once
                assert sorted((s["topic"], s["retained"]) for s in states) == [
                    ("rooms/den/boiler", True),
                    ("rooms/den/thermostat", True),
                ]
                # A bridge restart learns the states again without replaying them as news.
                gateway.worker.kill()
                await asyncio.to_thread(gateway.start_worker, 0)
                assert await frames_within(present, 1.5) == []
                device.publish("rooms/den/thermostat", b"", retain=True)  # cleared
                await asyncio.sleep(1.0)
                async with ws_connect(gateway.ws, "den") as later:
                    states = later.welcome["retained"]  # type: ignore[attr-defined]
                assert [s["topic"] for s in states] == ["rooms/den/boiler"]
        finally:
            gateway.stop()


async def test_msgpack_arrives_as_json_and_binary_as_base64(
    tmp_path: Path, broker: Mosquitto, redis_server: Redis, database_url: str
) -> None:
    gateway = gateway_for(tmp_path, broker, redis_server, database_url)
    reading: dict[str, Any] = {"t": 21.5, "ok": True, "tags": ["a", "b"]}
    try:
        async with ws_connect(gateway.ws, "lab") as ws:
            with Device(broker.port, "lab-device") as device:
                device.publish("packed/lab/probe", msgpack.packb(reading))  # by rule
                device.publish(
                    "rooms/lab/probe", msgpack.packb(reading), content_type="application/msgpack"
                )  # by content type
                device.publish("raw/lab", b"\x00\x01text")  # binary rule: even text stays raw
                frames = [await recv_json(ws) for _ in range(3)]
        assert [f["message"] for f in frames[:2]] == [reading, reading]
        assert (frames[2]["encoding"], frames[2]["message"]) == ("base64", "AAF0ZXh0")
    finally:
        gateway.stop()


async def test_an_unreachable_broker_gets_the_sender_an_error_and_the_message_later(
    tmp_path: Path, broker: Mosquitto, redis_server: Redis, database_url: str
) -> None:
    # The bridge reaches the broker through a link that is cut and then restored; the device
    # is subscribed throughout, so it can only miss the message if the bridge loses it.
    link = Proxy(broker.port).start()
    gateway = gateway_for(
        tmp_path,
        broker,
        redis_server,
        database_url,
        BRIDGE_PUBLISH_TIMEOUT="2",
        MQTT_URL=f"mqtt://127.0.0.1:{link.port}",
    )
    try:
        async with (
            mqtt_client(broker.port) as device,
            ws_connect(gateway.ws, "shed") as ws,
        ):
            await device.subscribe("rooms/shed/#", qos=1)
            link.cut()
            await ws.send(json.dumps({"message": "door closed?"}))
            own = await recv_json(ws)
            error = await recv_json(ws, 10)
            assert (error["type"], error["code"], error["id"]) == (
                "error",
                "broker_unreachable",
                own["id"],
            )
            link.unblock()
            received = await mqtt_messages_within(device, 15)
        envelopes = [json.loads(m.payload) for m in received]  # type: ignore[arg-type]
        assert [e["id"] for e in envelopes] == [own["id"]]
    finally:
        gateway.stop()
        link.stop()


async def test_a_stalled_consumer_drops_counted_and_other_rooms_flow(
    tmp_path: Path, broker: Mosquitto, redis_server: Redis, database_url: str, ledger: Ledger
) -> None:
    gateway = gateway_for(tmp_path, broker, redis_server, database_url, CHANNEL_CAPACITY="200")
    flood, total = 600, 300
    try:
        stalled_port = gateway.start_web()
        stalled = gateway.webs[1]
        async with (
            ws_connect(f"ws://127.0.0.1:{stalled_port}", "slow") as slow,
            ws_connect(gateway.ws, "fast") as fast,
        ):
            stalled.signal(signal.SIGSTOP)  # its consumers stop reading their channel
            try:
                with Device(broker.port, "flood") as device:
                    await asyncio.to_thread(device.publish_sequence, "rooms/slow/x", flood, 300.0)
                    await asyncio.to_thread(device.publish_sequence, "rooms/fast/x", total, 150.0)
                    (seen,) = await collect_sequence([fast], total, within=30)
                assert_exactly_once([seen], total)
                used = await asyncio.to_thread(redis_server.used_memory)
            finally:
                stalled.signal(signal.SIGCONT)
            delivered = len(await frames_within(slow, 3.0))

        # Its channel held what it could (events of one or more messages); every other
        # message was dropped and counted.
        def dropped_counted() -> int:  # the worker's counter, as its heartbeat reports it
            families = parse_exposition(http_get(f"{gateway.http}/metrics")[1])
            found = samples(families, "gateway_messages_dropped_total", reason="channel_full")
            return int(sum(sample.value for sample in found))

        with contextlib.suppress(TimeoutError):
            await asyncio.to_thread(
                wait_for, lambda: dropped_counted() >= flood - delivered, "the drops counted", 10
            )
        dropped = await asyncio.to_thread(dropped_counted)
        ledger.record(
            "a stalled consumer: memory bounded, drops counted, other rooms flow",
            f"daphne SIGSTOPped; its room got {delivered} of {flood}, {dropped} dropped and "
            f"counted; Redis {used / 1e6:.1f} MB; the table counts the other room",
            total,
            [seen],
        )
        assert delivered > 0
        assert dropped > 0
        assert delivered + dropped == flood
        assert used < 20 * 1024 * 1024
    finally:
        gateway.stop()


async def test_sigterm_drains_the_bridge_and_a_restart_goes_on(
    tmp_path: Path, broker: Mosquitto, redis_server: Redis, database_url: str, ledger: Ledger
) -> None:
    gateway = gateway_for(tmp_path, broker, redis_server, database_url)

    async def terminate_and_restart() -> None:
        await asyncio.sleep(2)
        worker = gateway.worker
        worker.signal(signal.SIGTERM)
        await asyncio.to_thread(wait_for, lambda: not worker.alive(), "the worker to drain", 15)
        assert worker.popen is not None
        assert worker.popen.returncode == 0
        assert "bridge stopped" in worker.log()
        await asyncio.to_thread(gateway.start_worker, 0)

    try:
        async with bridge_statuses(broker, gateway) as statuses:
            counts = await stream_through(
                gateway, broker, "drain", terminate_and_restart, total=300, rate=60.0
            )
        ledger.record(
            "SIGTERM drains the bridge: nothing lost or repeated",
            "bridge SIGTERMed mid-stream, restarted",
            300,
            counts,
        )
        assert_exactly_once(counts, 300)
        # The bridge said it stopped; the broker, told by a clean disconnect, kept its will.
        assert statuses == ["online", "stopped", "online"]
    finally:
        gateway.stop()
