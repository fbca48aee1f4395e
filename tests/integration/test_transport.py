"""The gateway's transport against a real Redis: what a process's hub reads is what was sent.

A burst appended to history and delivered in one Redis step reaches each hub in its rooms as
message events, each room's messages in order with the seqs the same step gave them; the
events the script builds are read by the same decoder as those built in Python.
"""

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import msgpack
import pytest
from redis.asyncio import Redis as RedisClient
from redis.exceptions import MaxConnectionsError

from gateway import metrics
from gateway.envelope import Envelope, new_envelope
from gateway.history import COPY, RedisWindow
from gateway.shared import POOL_CONNECTIONS, connect
from gateway.transport import (
    EVENT_ENVELOPES,
    FORMAT,
    ROOM_PRESENCE,
    Event,
    PresenceEvent,
    RedisTransport,
    decode,
    encode,
    messages_event,
    room_error,
)
from tests.support.processes import Redis

CAPACITY = 5


@pytest.fixture
async def client(redis_server: Redis) -> AsyncIterator[RedisClient]:
    ours = connect(redis_server.url)
    yield ours
    await ours.aclose(close_connection_pool=True)


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:8]}:"  # keys of its own: the Redis is shared by the tests


@pytest.fixture
def rooms(client: RedisClient, prefix: str) -> RedisTransport:
    return RedisTransport(client, prefix=prefix, capacity=CAPACITY, membership_seconds=60)


@pytest.fixture
def window(client: RedisClient, prefix: str) -> RedisWindow:
    return RedisWindow(client, prefix=prefix, window=1000, ttl_seconds=60)


def envelope(room: str, text: str, message_id: str | None = None) -> Envelope:
    return new_envelope(
        room=room, message=text, source="mqtt", sender="d", gateway="g", message_id=message_id
    )


async def hub(rooms: RedisTransport, *names: str) -> str:
    hub_id = await rooms.open_hub()
    for name in names:
        await rooms.join(hub_id, name)
    return hub_id


def texts(events: list[Event]) -> list[tuple[str, Any, int]]:
    found = []
    for event in events:
        assert event["type"] == "room.messages"
        found += [(e["room"], e["message"], e["seq"]) for e in event["envelopes"]]
    return found


async def waiting(rooms: RedisTransport, hub_id: str) -> int:
    return int(await rooms.client.llen(f"{rooms.prefix}inbox:{hub_id}"))


async def test_a_burst_reaches_each_hub_in_its_rooms_in_order_with_its_seqs(
    rooms: RedisTransport, window: RedisWindow
) -> None:
    both, only_b = await hub(rooms, "a", "b"), await hub(rooms, "b")
    for name in ("a", "b"):
        await window.seed(name, 0)
    burst = [envelope("a", "a1"), envelope("a", "a2"), envelope("b", "b1")]

    seqs = await rooms.append_and_deliver(window, burst, {})

    assert seqs == [1, 2, 1]
    assert texts(await rooms.receive(both, 10)) == [("a", "a1", 1), ("a", "a2", 2), ("b", "b1", 1)]
    assert texts(await rooms.receive(only_b, 10)) == [("b", "b1", 1)]
    # Kept in the window before anyone could see them: a late joiner reads them there.
    assert [m["message"] for m in await window.after("a", 0, 10)] == ["a1", "a2"]


async def test_the_scripts_events_decode_to_the_envelopes_that_were_appended(
    rooms: RedisTransport, window: RedisWindow
) -> None:
    hub_id = await hub(rooms, "same")
    await window.seed("same", 0)
    burst = [envelope("same", {"t": 21.5, "text": "é ✓ \n"}), envelope("same", [1, None])]
    await rooms.append_and_deliver(window, burst, {})

    [raw] = await rooms.client.lrange(f"{rooms.prefix}inbox:{hub_id}", 0, -1)
    event = decode(raw)
    assert event["type"] == "room.messages"
    # Field for field what went in, with the seq the script gave.
    assert event["envelopes"] == [{**e, "seq": n} for n, e in enumerate(burst, start=1)]
    # And the same bytes as the encoder builds for that event.
    assert msgpack.unpackb(raw) == msgpack.unpackb(encode(event))


async def test_more_than_an_event_holds_arrives_as_several_events_in_order(
    rooms: RedisTransport, window: RedisWindow
) -> None:
    hub_id = await hub(rooms, "long")
    await window.seed("long", 0)
    count = 2 * EVENT_ENVELOPES + 22
    burst = [envelope("long", f"m{n}") for n in range(count)]

    await rooms.append_and_deliver(window, burst, {})

    events = await rooms.receive(hub_id, 10)
    assert [len(e["envelopes"]) for e in events if e["type"] == "room.messages"] == [
        EVENT_ENVELOPES,
        EVENT_ENVELOPES,
        22,
    ]
    assert texts(events) == [("long", f"m{n}", n + 1) for n in range(count)]


async def test_a_redelivery_of_a_sent_message_goes_no_further(
    rooms: RedisTransport, window: RedisWindow
) -> None:
    hub_id = await hub(rooms, "qos1")
    await window.seed("qos1", 0)
    first = [envelope("qos1", "reading", message_id="m1")]
    assert await rooms.append_and_deliver(window, first, {"m1": False}) == [1]
    await rooms.receive(hub_id, 10)

    again = [envelope("qos1", "reading", message_id="m1")]
    assert await rooms.append_and_deliver(window, again, {"m1": True}) == [COPY]
    assert await waiting(rooms, hub_id) == 0
    assert [m["seq"] for m in await window.after("qos1", 0, 10)] == [1]


async def test_a_room_without_a_counter_is_left_untouched(
    rooms: RedisTransport, window: RedisWindow
) -> None:
    hub_id = await hub(rooms, "seeded", "new")
    await window.seed("seeded", 0)
    burst = [envelope("seeded", "s1"), envelope("new", "n1")]

    assert await rooms.append_and_deliver(window, burst, {}) is None
    # Nothing half done: the caller seeds the counter and appends the whole burst again.
    assert await window.after("seeded", 0, 10) == []
    assert await waiting(rooms, hub_id) == 0


async def test_a_full_inbox_misses_the_burst_and_the_drop_is_counted(
    rooms: RedisTransport, window: RedisWindow
) -> None:
    full, free = await hub(rooms, "busy"), await hub(rooms, "busy")
    for n in range(CAPACITY):  # a process that stopped reading
        await rooms.send_to(full, room_error(envelope("busy", "x"), "c", f"{n}", None))
    await window.seed("busy", 0)
    burst = [envelope("busy", "x"), envelope("busy", "y")]
    before = metrics.get("messages_dropped", "channel_full")

    await rooms.append_and_deliver(window, burst, {})
    await rooms.send_rooms({"busy": [{**envelope("busy", "z"), "seq": 3}]})

    assert metrics.get("messages_dropped", "channel_full") - before == 3
    assert await waiting(rooms, full) == CAPACITY
    assert [m for _, m, _ in texts(await rooms.receive(free, 10))] == ["x", "y", "z"]


async def test_presence_and_errors_travel_and_decode(rooms: RedisTransport) -> None:
    watcher, other = await hub(rooms, "lobby"), await hub(rooms, "elsewhere")
    joined = PresenceEvent(
        type=ROOM_PRESENCE,
        room="lobby",
        event="join",
        member={"key": "ws:1", "kind": "browser", "name": "ann", "since": "2026-12-01T00:00:00Z"},
        version=7,
        count=3,
    )
    await rooms.send("lobby", [joined])
    error = room_error(envelope("lobby", "hi"), "broker_refused", "not allowed", "ws:1")
    await rooms.send_to(watcher, error)

    assert await rooms.receive(watcher, 10) == [joined, error]
    assert await waiting(rooms, other) == 0


async def test_a_hub_that_left_gets_nothing_and_a_lapsed_one_is_skipped(
    rooms: RedisTransport, client: RedisClient, prefix: str
) -> None:
    stays, leaves = await hub(rooms, "r"), await hub(rooms, "r")
    await rooms.leave(leaves, "r")
    # A crashed process's hub: its membership lapsed a second ago.
    crashed = "crashed-hub"
    await client.zadd(f"{prefix}hubs:r", {crashed: 1.0})

    await rooms.send_rooms({"r": [{**envelope("r", "m"), "seq": 1}]})

    assert texts(await rooms.receive(stays, 10)) == [("r", "m", 1)]
    assert await waiting(rooms, leaves) == 0
    assert await waiting(rooms, crashed) == 0


async def test_receive_reads_what_waits_at_once_then_waits_for_the_next(
    rooms: RedisTransport,
) -> None:
    hub_id = await hub(rooms, "q")
    for n in range(3):
        await rooms.send_rooms({"q": [{**envelope("q", f"m{n}"), "seq": n + 1}]})
    assert [m for _, m, _ in texts(await rooms.receive(hub_id, 2))] == ["m0", "m1"]
    assert [m for _, m, _ in texts(await rooms.receive(hub_id, 2))] == ["m2"]
    later = asyncio.create_task(rooms.receive(hub_id, 2))
    await asyncio.sleep(0.2)
    assert not later.done()
    await rooms.send_rooms({"q": [{**envelope("q", "m3"), "seq": 4}]})
    assert [m for _, m, _ in texts(await asyncio.wait_for(later, 5))] == ["m3"]


async def test_an_event_of_another_format_is_dropped_and_counted(
    rooms: RedisTransport,
) -> None:
    hub_id = await hub(rooms, "v")
    inbox = f"{rooms.prefix}inbox:{hub_id}"
    await rooms.client.rpush(inbox, msgpack.packb([FORMAT + 1, "m", [], []]), b"\xc1junk")
    await rooms.send_rooms({"v": [{**envelope("v", "ok"), "seq": 1}]})
    before = metrics.get("messages_dropped", "unknown_event")

    assert texts(await rooms.receive(hub_id, 10)) == [("v", "ok", 1)]
    assert metrics.get("messages_dropped", "unknown_event") - before == 2


async def test_a_burst_past_the_pool_waits_for_a_connection_instead_of_failing(
    client: RedisClient, redis_server: Redis
) -> None:
    async def burst(on: RedisClient) -> list[object]:
        # Each BLPOP holds a connection for 0.2 s; three times the pool's connections at once.
        return await asyncio.gather(
            *(on.blpop([f"burst:{n}"], timeout=0.2) for n in range(3 * POOL_CONNECTIONS)),
            return_exceptions=True,
        )

    assert await burst(client) == [None] * (3 * POOL_CONNECTIONS)
    # What the waiting pool is for: redis-py's own refuses the connection past its limit.
    stock = RedisClient.from_url(redis_server.url, max_connections=POOL_CONNECTIONS)
    try:
        assert any(isinstance(r, MaxConnectionsError) for r in await burst(stock))
    finally:
        await stock.aclose()


def test_every_event_kind_round_trips_through_the_encoder_and_decoder() -> None:
    message = {**envelope("room", {"n": [1, 2.5, "x"]}, message_id="abc"), "seq": 7}
    events: list[Event] = [
        messages_event([message, {**envelope("room", "two"), "seq": 8}]),
        PresenceEvent(
            type=ROOM_PRESENCE,
            room="room",
            event="leave",
            member={
                "key": "device:s1",
                "kind": "device",
                "name": "s1",
                "since": "2026-12-01T00:00:00Z",
                "verified": True,
            },
            version=12,
            count=0,
        ),
        room_error(envelope("room", "m"), "bridge_unavailable", "the bridge is not running", None),
        room_error(envelope("room", "m"), "broker_refused", "denied", "ws:ab12"),
    ]
    for event in events:
        assert decode(encode(event)) == event
