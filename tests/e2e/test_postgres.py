"""The gateway on PostgreSQL: what jsonb or a column could not keep is refused at the edge and
counted, the socket or device link goes on, and every other message is kept and comes back.

A real gateway (daphne and a bridge worker, Mosquitto, Redis) on a PostgreSQL database of this
module's own, migrated as `make run` migrates one; the tests read that database with psycopg.
"""

import asyncio
import json
from typing import Any

import psycopg
import pytest
import redis

from tests.support.clients import frames_within, mqtt_client, recv_json, ws_connect
from tests.support.processes import (
    Gateway,
    Mosquitto,
    Postgres,
    Redis,
    http_get,
    migrated,
    wait_for,
)
from tests.support.prometheus import parse_exposition, samples


@pytest.fixture(scope="module")
def database_url(postgres_server: Postgres) -> str:
    """A migrated PostgreSQL database, in place of the SQLite one the other modules use."""
    return migrated(postgres_server.create_database("gateway_e2e"))


def stored(url: str, room: str) -> list[Any]:
    """The messages of ``room`` in the database, in ``seq`` order."""
    with psycopg.connect(url) as connection:
        rows = connection.execute(
            "SELECT envelope -> 'message' FROM gateway_message WHERE room = %s ORDER BY seq",
            [room],
        ).fetchall()
    return [message for (message,) in rows]


async def wait_stored(url: str, room: str, expected: list[Any]) -> None:
    """Wait for the history writer to have written exactly ``expected`` for ``room``."""
    await asyncio.to_thread(
        wait_for, lambda: stored(url, room) == expected, f"{expected} in {room}'s rows", 10
    )


def forget_window(gateway: Gateway, redis_server: Redis, room: str) -> None:
    """Drop ``room``'s recent window in Redis, so that a resume reads the database."""
    window = f"gateway:{gateway.env['GATEWAY_ID']}:window:{room}"
    client = redis.Redis.from_url(redis_server.url)
    try:
        assert client.delete(window, f"{window}:bytes") >= 1, f"no window at {window}"
    finally:
        client.close()


async def test_a_nul_from_a_browser_is_refused_and_no_other_room_loses_history(
    gateway: Gateway, redis_server: Redis, database_url: str
) -> None:
    rooms = ("pg-left", "pg-right")
    async with (
        ws_connect(gateway.ws, "pg-nul") as nul,
        ws_connect(gateway.ws, rooms[0]) as left,
        ws_connect(gateway.ws, rooms[1]) as right,
    ):
        for ws, room in ((left, rooms[0]), (right, rooms[1])):
            await ws.send(json.dumps({"message": f"{room} before"}))
            assert (await recv_json(ws))["message"] == f"{room} before"
        await nul.send('{"message": "\\u0000"}')  # the JSON escape of U+0000
        error = await recv_json(nul)
        assert (error["type"], error["code"]) == ("error", "invalid_json")
        assert "U+0000" in error["detail"]
        await nul.send(json.dumps({"message": "still here"}))  # the socket goes on
        assert (await recv_json(nul))["message"] == "still here"
        for ws, room in ((left, rooms[0]), (right, rooms[1])):
            await ws.send(json.dumps({"message": f"{room} after"}))
            assert (await recv_json(ws))["message"] == f"{room} after"
    await wait_stored(database_url, "pg-nul", ["still here"])
    for room in rooms:
        said = [f"{room} before", f"{room} after"]
        await wait_stored(database_url, room, said)
        async with ws_connect(gateway.ws, room, since=0) as back:  # from the recent window
            welcome = back.welcome  # type: ignore[attr-defined]
            assert [m["message"] for m in welcome["messages"]] == said
            seqs = [m["seq"] for m in welcome["messages"]]
        # Without the window, the same resume reads PostgreSQL.
        await asyncio.to_thread(forget_window, gateway, redis_server, room)
        async with ws_connect(gateway.ws, room, since=0) as back:
            welcome = back.welcome  # type: ignore[attr-defined]
            assert [m["message"] for m in welcome["messages"]] == said
            assert [m["seq"] for m in welcome["messages"]] == seqs
            assert welcome["gap"] is False


async def test_a_retained_message_on_a_600_character_topic_is_dropped_and_counted(
    gateway: Gateway, broker: Mosquitto, database_url: str
) -> None:
    # Over the bridge's 512 characters: a retained message is kept as room state, and
    # PostgreSQL would refuse its topic in that table's column (SQLite would not).
    room = "pg-meters"
    long_topic = f"rooms/{room}/" + "s" * (600 - len(f"rooms/{room}/"))
    assert len(long_topic) == 600
    async with ws_connect(gateway.ws, room) as ws, mqtt_client(broker.port) as device:
        await device.publish(f"rooms/{room}/meter", b'{"n": 1}', qos=1)
        await device.publish(long_topic, b'{"n": 2}', qos=1, retain=True)
        await device.publish(f"rooms/{room}/meter", b'{"n": 3}', qos=1)
        frames = [await recv_json(ws), await recv_json(ws)]
        assert [(f["sender"], f["message"]) for f in frames] == [
            ("meter", {"n": 1}),
            ("meter", {"n": 3}),
        ]
        assert await frames_within(ws, 0.5) == []
    await wait_stored(database_url, room, [{"n": 1}, {"n": 3}])
    async with ws_connect(gateway.ws, room) as again:
        assert again.welcome["retained"] == []  # type: ignore[attr-defined]

    def counted() -> bool:  # the worker's numbers reach /metrics with its next heartbeat
        families = parse_exposition(http_get(f"{gateway.http}/metrics")[1])
        found = samples(families, "gateway_messages_dropped_total", reason="topic_too_long")
        return [sample.value for sample in found] == [1]

    await asyncio.to_thread(wait_for, counted, "the long topic's drop in /metrics", 10)
    assert "a topic of 600 characters, over 512" in gateway.worker.log()
