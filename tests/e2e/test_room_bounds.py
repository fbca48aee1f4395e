"""What a stranger can make the gateway keep for rooms is bounded: bytes per room, rooms per
gateway; and an idle room is forgotten, so the cap on rooms never becomes a permanent refusal.

A gateway of its own, with its own database (the cap counts every room in it) and small limits.
"""

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from websockets.asyncio.client import connect

from tests.conftest import start_gateway
from tests.support.clients import mqtt_client, read_until_closed, recv_json, ws_connect
from tests.support.processes import (
    Gateway,
    Mosquitto,
    Redis,
    django_shell,
    http_get,
    http_request,
    migrated,
    wait_for,
)
from tests.support.prometheus import parse_exposition, samples

TOKEN = """
from django.contrib.auth import get_user_model
from gateway.tokens import issue_token
user, _ = get_user_model().objects.get_or_create(username="poster")
print(issue_token(user, "bounds")[1])
"""
PAYLOAD = 8 * 1024  # raw bytes per device message: control characters, six bytes each as JSON
MESSAGES = 2000
STEP = 250
ROOM_BYTES = 1 << 20  # HISTORY_ROOM_BYTES
WINDOW_BYTES = 256 * 1024  # HISTORY_WINDOW_BYTES
MAX_ROOMS = 4
IDLE_SECONDS = 3


@contextlib.contextmanager
def own_gateway(workdir: Path, broker: Mosquitto, redis: Redis, **env: str) -> Iterator[Gateway]:
    """A gateway with a migrated database of its own: the cap counts every room in it."""
    url = migrated(f"sqlite:///{workdir / 'gateway.sqlite3'}")
    stack = start_gateway(workdir, broker, redis, url, **env)
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def bounded(
    tmp_path_factory: pytest.TempPathFactory, broker: Mosquitto, redis_server: Redis
) -> Iterator[Gateway]:
    """Small bytes per room."""
    with own_gateway(
        tmp_path_factory.mktemp("bounded"),
        broker,
        redis_server,
        GATEWAY_MAX_PAYLOAD_BYTES=str(PAYLOAD),
        HISTORY_ROOM_BYTES=str(ROOM_BYTES),
        HISTORY_WINDOW_BYTES=str(WINDOW_BYTES),
    ) as stack:
        yield stack


@pytest.fixture(scope="module")
def capped(
    tmp_path_factory: pytest.TempPathFactory, broker: Mosquitto, redis_server: Redis
) -> Iterator[Gateway]:
    """Few rooms, soon forgotten."""
    with own_gateway(
        tmp_path_factory.mktemp("capped"),
        broker,
        redis_server,
        GATEWAY_MAX_ROOMS=str(MAX_ROOMS),
        GATEWAY_ROOM_IDLE_SECONDS=str(IDLE_SECONDS),
    ) as stack:
        yield stack


def database(gateway: Gateway) -> sqlite3.Connection:
    return sqlite3.connect(gateway.env["DATABASE_URL"].removeprefix("sqlite:///"))


def stored_bytes(gateway: Gateway, room: str) -> tuple[int, int]:
    """The room's rows in the database and their bytes, as stored."""
    with database(gateway) as db:
        count, size = db.execute(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(CAST(envelope AS BLOB))), 0) "
            "FROM gateway_message WHERE room = ?",
            (room,),
        ).fetchone()
    return int(count), int(size)


def window_bytes(gateway: Gateway, redis_server: Redis, room: str) -> int:
    client = redis.Redis.from_url(redis_server.url)
    try:
        key = f"gateway:{gateway.env['GATEWAY_ID']}:window:{room}"
        return sum(len(member) for member in client.zrange(key, 0, -1))
    finally:
        client.close()


def rooms_recorded(gateway: Gateway) -> set[str]:
    with database(gateway) as db:
        return {name for (name,) in db.execute("SELECT name FROM gateway_room")}


async def test_a_room_flooded_with_control_characters_stays_within_its_bytes(
    bounded: Gateway, broker: Mosquitto, redis_server: Redis
) -> None:
    async with ws_connect(bounded.ws, "calm") as calm:
        await calm.send(json.dumps({"message": "before the flood"}))
        assert (await recv_json(calm))["message"] == "before the flood"

    def arrived(count: int) -> Callable[[], bool]:
        def check() -> bool:
            query = "SELECT MAX(seq) FROM gateway_message WHERE room = 'flood'"
            with database(bounded) as db:
                (top,) = db.execute(query).fetchone()
            return bool(top is not None and top >= count)

        return check

    junk = bytes([1]) * PAYLOAD  # 8 KiB that JSON writes as 48 KiB
    peaks: list[int] = []  # the room's bytes in the database after each step
    async with mqtt_client(broker.port) as device:
        # In steps the bridge keeps up with: the broker holds 1,000 messages for it at most.
        for step in range(0, MESSAGES, STEP):
            for _ in range(STEP):
                await device.publish("rooms/flood/junk-box", junk, qos=1)
            await asyncio.to_thread(wait_for, arrived(step + STEP), "the flood's step", 60)
            peaks.append(stored_bytes(bounded, "flood")[1])
    count, size = stored_bytes(bounded, "flood")
    assert 0 < size <= ROOM_BYTES, (count, size)
    assert max(peaks) <= ROOM_BYTES, peaks  # under it all along, not only in the end
    assert count < MESSAGES  # the oldest went, the newest stayed
    assert 0 < window_bytes(bounded, redis_server, "flood") <= WINDOW_BYTES
    # The room next door kept its message, and a browser reads the flood's newest ones.
    assert stored_bytes(bounded, "calm")[0] == 1
    async with ws_connect(bounded.ws, "flood") as late:
        newest = late.welcome["messages"]  # type: ignore[attr-defined]
        assert newest
        assert newest[-1]["seq"] == MESSAGES


async def test_past_the_room_cap_new_rooms_are_refused_and_old_ones_work_until_forgotten(
    capped: Gateway, broker: Mosquitto
) -> None:
    bounded = capped
    fresh = [f"r{n}" for n in range(MAX_ROOMS)]
    for room in fresh:
        async with ws_connect(bounded.ws, room) as ws:
            await ws.send(json.dumps({"message": "hello"}))
            assert (await recv_json(ws))["message"] == "hello"
    assert len(rooms_recorded(bounded)) == MAX_ROOMS

    # A socket into a new room: an error frame naming the cap, then 1008.
    async with connect(f"{bounded.ws}/ws/rooms/one-too-many/", origin=bounded.http) as ws:
        frames, code = await read_until_closed(ws)
    assert (code, [f["code"] for f in frames]) == (1008, ["too_many_rooms"])
    # A device's message into one: dropped and counted, as the API's post is refused.
    async with mqtt_client(broker.port) as device:
        await device.publish("rooms/one-too-many/sensor-1", b"21.5", qos=1)
    token = await asyncio.to_thread(django_shell, TOKEN, env=bounded.env)
    status, body = await asyncio.to_thread(
        http_request,
        "POST",
        f"{bounded.http}/api/rooms/one-too-many/messages",
        body=b'{"message": 1}',
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
    )
    assert (status, json.loads(body)["error"]) == (429, "too_many_rooms"), body
    # A room that exists keeps working meanwhile.
    async with ws_connect(bounded.ws, fresh[0]) as ws:
        await ws.send(json.dumps({"message": "still open"}))
        assert (await recv_json(ws))["message"] == "still open"
    assert "one-too-many" not in rooms_recorded(bounded)
    counters = await asyncio.to_thread(refusals, bounded)
    assert counters.get("socket", 0) >= 1
    assert counters.get("message", 0) >= 1

    # Nobody present and no message for the idle time: forgotten, and the name is free.
    await asyncio.to_thread(
        wait_for, lambda: not rooms_recorded(bounded), "idle rooms to go", 4 * IDLE_SECONDS + 30
    )
    async with ws_connect(bounded.ws, "one-too-many") as ws:
        await ws.send(json.dumps({"message": "room at last"}))
        assert (await recv_json(ws))["message"] == "room at last"


def refusals(gateway: Gateway) -> dict[str, float]:
    _, text = http_get(f"{gateway.http}/metrics")
    found = samples(parse_exposition(text), "gateway_rooms_refused_total")
    return {sample.labels.get("where", ""): sample.value for sample in found}
