"""Rooms on two Redis shards (``REDIS_SHARDS``): real Redis servers, Mosquitto, daphne and a
bridge worker. Each room lives on one shard; a shard that dies stops only its rooms, says so,
and hands on what waited for it when it is back."""

import asyncio
import json
import time
from collections import Counter
from pathlib import Path

import redis
from websockets.asyncio.client import ClientConnection, connect

from gateway.shared import MAIN_SHARD, shard_of
from tests.conftest import gateway_on_sentinels, start_gateway
from tests.support.clients import (
    frames_within,
    mqtt_client,
    read_until_closed,
    recv_json,
    ws_connect,
)
from tests.support.ledger import SCALE, Ledger
from tests.support.processes import Mosquitto, Redis, http_get, port_open, wait_for

SHARDS = (MAIN_SHARD, "b")
DOWN_MESSAGES = 40 * SCALE  # device messages sent to each room while shard b is down
WAIT = 15.0  # seconds for anything to arrive


def room_on(shard: int, prefix: str) -> str:
    """A room name that shard ``shard`` holds."""
    return next(f"{prefix}-{i}" for i in range(1000) if shard_of(f"{prefix}-{i}", SHARDS) == shard)


async def messages(ws: ClientConnection, count: int) -> list[dict[str, object]]:
    """The next ``count`` message frames (errors and presence skipped)."""
    found: list[dict[str, object]] = []
    while len(found) < count:
        frame = await recv_json(ws, WAIT)
        if frame["type"] == "message":
            found.append(frame)
    return found


async def error_codes(ws: ClientConnection, until: str) -> list[str]:
    """The codes of the error frames that arrive, up to one with code ``until``."""
    codes: list[str] = []
    while until not in codes:
        frame = await recv_json(ws, WAIT)
        if frame["type"] == "error":
            codes.append(frame["code"])
    return codes


def keys_of(server: Redis) -> set[str]:
    client = redis.Redis(host="127.0.0.1", port=server.port, decode_responses=True)
    try:
        return set(client.keys("*:seq:*"))
    finally:
        client.close()


async def test_a_dead_shard_stops_only_its_rooms_says_so_and_loses_nothing(
    tmp_path: Path, database_url: str, ledger: Ledger
) -> None:
    for part in ("main", "b", "gateway", "broker"):
        (tmp_path / part).mkdir()
    # The window of the shipped mosquitto.conf: the bridge may hold more than Mosquitto's
    # default of 20 unacknowledged for the dead shard while other rooms' messages go on.
    window = "allow_anonymous true\nmax_inflight_messages 1000\n"
    broker = Mosquitto(tmp_path / "broker", extra=window).start()
    main, shard_b = Redis(tmp_path / "main").start(), Redis(tmp_path / "b").start()
    gateway = start_gateway(
        tmp_path / "gateway", broker, main, database_url, REDIS_SHARDS=f"b={shard_b.url}"
    )
    on_main, on_b = room_on(0, "hall"), room_on(1, "yard")
    try:
        async with (
            ws_connect(gateway.ws, on_main) as reader_main,
            ws_connect(gateway.ws, on_main) as writer_main,
            ws_connect(gateway.ws, on_b) as reader_b,
            ws_connect(gateway.ws, on_b) as writer_b,
            mqtt_client(broker.port) as device,
        ):
            # Both shards carry device and browser messages.
            for room in (on_main, on_b):
                await device.publish(f"rooms/{room}/meter", json.dumps({"n": 0}), qos=1)
            await writer_main.send(json.dumps({"message": "hello main"}))
            await writer_b.send(json.dumps({"message": "hello b"}))
            seqs_before = []
            for reader, room in ((reader_main, on_main), (reader_b, on_b)):
                got = await messages(reader, 2)
                assert sorted(str(f["source"]) for f in got) == ["mqtt", "ws"]
                assert {f["room"] for f in got} == {room}
                seqs_before = [int(str(f["seq"])) for f in got]
            gid = gateway.env["GATEWAY_ID"]
            counter_main, counter_b = (f"gateway:{gid}:seq:{room}" for room in (on_main, on_b))
            assert counter_main in keys_of(main)
            assert counter_b not in keys_of(main)
            assert counter_b in keys_of(shard_b)
            assert counter_main not in keys_of(shard_b)

            shard_b.process.kill()  # type: ignore[union-attr]
            wait_for(lambda: not port_open(shard_b.port), "shard b to go away")

            # Its rooms' sockets are told; the main shard's rooms go on.
            assert await error_codes(reader_b, "room_unavailable") == ["room_unavailable"]
            for n in range(1, DOWN_MESSAGES + 1):  # 20 a second to each room
                for room in (on_main, on_b):
                    await device.publish(f"rooms/{room}/meter", json.dumps({"n": n}), qos=1)
                await asyncio.sleep(0.05)
            numbers = [{"n": n} for n in range(1, DOWN_MESSAGES + 1)]
            flowing = await messages(reader_main, DOWN_MESSAGES)
            assert [f["message"] for f in flowing] == numbers
            assert not [f for f in await frames_within(reader_b, 0.5) if f["type"] == "message"]
            await writer_b.send(json.dumps({"message": "into the void"}))
            # Told its room is held up, then that its own message was not taken.
            assert await error_codes(writer_b, "unavailable") == ["room_unavailable", "unavailable"]
            async with connect(f"{gateway.ws}/ws/rooms/{on_b}/", origin=gateway.http) as late:
                frames, code = await read_until_closed(late)
            assert code == 1013
            assert [f["code"] for f in frames] == ["room_unavailable"]
            status, body = http_get(f"{gateway.http}/readyz")
            assert status == 200
            shards = json.loads(body)["shards"]
            assert shards["main"] == "ok"
            assert shards["b"] != "ok"
            status, body = http_get(f"{gateway.http}/api/rooms/{on_b}/messages")
            assert (status, json.loads(body)["error"]) == (503, "unavailable")
            status, body = http_get(f"{gateway.http}/api/rooms/{on_main}/messages")
            assert status == 200
            assert {"n": 1} in [m["message"] for m in json.loads(body)["messages"]]

            # Back (empty: it kept nothing): what the devices sent meanwhile arrives, once,
            # in order, numbered past everything the room had.
            restarted = Redis(tmp_path / "b")
            restarted.port = shard_b.port
            shard_b = restarted.start()
            back = time.monotonic()
            held = await messages(reader_b, DOWN_MESSAGES)
            recovery = time.monotonic() - back
            held += [f for f in await frames_within(reader_b, 2.0) if f["type"] == "message"]
            assert [f["message"] for f in held] == numbers
            seqs = [int(str(f["seq"])) for f in held]
            assert seqs == sorted(set(seqs))
            assert seqs[0] > max(seqs_before)  # never a seq a browser saw before
            # What devices send from now on comes after what waited.
            await device.publish(f"rooms/{on_b}/meter", json.dumps({"n": "after"}), qos=1)
            [after] = await messages(reader_b, 1)
            assert after["message"] == {"n": "after"}
            assert int(str(after["seq"])) > seqs[-1]
            ledger.record(
                "a Redis shard killed: only its rooms stop, told; what waited for it arrives",
                f"2 shards, shard b SIGKILLed and restarted empty; {DOWN_MESSAGES} QoS 1 "
                "messages to a room on each meanwhile; the table counts both rooms",
                DOWN_MESSAGES,
                [
                    Counter(int(f["message"]["n"]) - 1 for f in got)  # type: ignore[index]
                    for got in (flowing, held)
                ],
                recovery,
            )
    finally:
        gateway.stop()
        shard_b.stop()
        main.stop()
        broker.stop()


async def test_shards_on_sentinels_are_masters_they_watch_reached_over_tls_with_a_password(
    tmp_path: Path, broker: Mosquitto, database_url: str
) -> None:
    replicated, gateway = gateway_on_sentinels(
        tmp_path, broker, database_url, "gw-sharded", secure=True, shards=1
    )
    names = (MAIN_SHARD, "shard-1")
    rooms = [
        next(f"porch-{i}" for i in range(1000) if shard_of(f"porch-{i}", names) == shard)
        for shard in (0, 1)
    ]
    try:
        gateway.start()
        async with (
            ws_connect(gateway.ws, rooms[0]) as on_main,
            ws_connect(gateway.ws, rooms[1]) as on_shard,
            mqtt_client(broker.port) as device,
        ):
            for room in rooms:
                await device.publish(f"rooms/{room}/meter", json.dumps({"at": room}), qos=1)
            for ws, room in ((on_main, rooms[0]), (on_shard, rooms[1])):
                [frame] = await messages(ws, 1)
                assert frame["message"] == {"at": room}
        shard = replicated.shards["shard-1"].client()
        main = replicated.master().client()
        try:
            assert shard.exists(f"gateway:gw-sharded:seq:{rooms[1]}") == 1
            assert shard.exists(f"gateway:gw-sharded:seq:{rooms[0]}") == 0
            assert main.exists(f"gateway:gw-sharded:seq:{rooms[0]}") == 1
        finally:
            shard.close()
            main.close()
    finally:
        gateway.stop()
        replicated.stop()
