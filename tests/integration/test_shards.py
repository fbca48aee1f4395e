"""Rooms on two real Redis servers: each room's counter, window and events are on its shard,
and a hub reads each shard as a lane of its own."""

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from redis.asyncio import Redis as RedisClient
from redis.exceptions import ConnectionError as RedisConnectionError

from gateway.envelope import Envelope, new_envelope
from gateway.history import RedisWindow, ShardedWindow
from gateway.presence import Member, RedisStore, ShardedStore
from gateway.shared import connect, shard_of
from gateway.transport import RedisTransport, ShardedTransport
from tests.support.processes import Redis, free_port

NAMES = ("main", "b")


@pytest.fixture(scope="module")
def second_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Redis]:
    server = Redis(tmp_path_factory.mktemp("shard-b")).start()
    yield server
    server.stop()


@pytest.fixture
async def clients(redis_server: Redis, second_redis: Redis) -> AsyncIterator[list[RedisClient]]:
    ours = [connect(redis_server.url), connect(second_redis.url)]
    yield ours
    for client in ours:
        await client.aclose(close_connection_pool=True)


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:8]}:"


def room_on(shard: int, base: str) -> str:
    return next(f"{base}-{i}" for i in range(1000) if shard_of(f"{base}-{i}", NAMES) == shard)


def sharded(clients: list[RedisClient], prefix: str) -> tuple[ShardedTransport, ShardedWindow]:
    transports = [
        RedisTransport(c, prefix=prefix, capacity=100, membership_seconds=60) for c in clients
    ]
    windows = [RedisWindow(c, prefix=prefix, window=100, ttl_seconds=60) for c in clients]
    return ShardedTransport(transports, NAMES), ShardedWindow(windows, NAMES)


def envelope(room: str, text: str) -> Envelope:
    return new_envelope(room=room, message=text, source="mqtt", sender="d", gateway="g")


async def test_a_burst_across_shards_is_numbered_and_delivered_on_each_rooms_shard(
    clients: list[RedisClient], prefix: str
) -> None:
    rooms, window = sharded(clients, prefix)
    north, south = room_on(0, "north"), room_on(1, "south")
    hub = await rooms.open_hub()
    for room in (north, south):
        await rooms.join(hub, room)
    burst = [envelope(room, f"{room}-{i}") for i in range(3) for room in (north, south)]
    for room in (north, south):
        await window.seed(room, 0)

    # A burst that spans shards takes two steps: numbered on each shard, then delivered.
    assert await rooms.append_and_deliver(window, burst, {}) is None
    seqs = await window.append(burst)
    assert seqs == [1, 1, 2, 2, 3, 3]
    for envelope_, seq in zip(burst, seqs, strict=True):
        envelope_["seq"] = seq
    by_room: dict[str, list[Envelope]] = {}
    for envelope_ in burst:
        by_room.setdefault(envelope_["room"], []).append(envelope_)
    await rooms.send_rooms(by_room)

    # Each lane holds only its shard's rooms, each room's messages in order.
    for lane, room in ((0, north), (1, south)):
        events = await rooms.receive(hub, 10, lane)
        got = [(e["room"], e["message"], e["seq"]) for ev in events for e in ev["envelopes"]]  # type: ignore[typeddict-item]
        assert got == [(room, f"{room}-{i}", i + 1) for i in range(3)]
    assert await clients[0].exists(f"{prefix}seq:{north}") == 1
    assert await clients[0].exists(f"{prefix}seq:{south}") == 0
    assert await clients[1].exists(f"{prefix}seq:{south}") == 1
    assert await clients[1].exists(f"{prefix}seq:{north}") == 0

    # A burst of one shard's rooms is appended and delivered in one step there.
    more = [envelope(south, "again")]
    assert await rooms.append_and_deliver(window, more, {}) == [4]
    [event] = await rooms.receive(hub, 10, 1)
    assert [e["message"] for e in event["envelopes"]] == ["again"]  # type: ignore[typeddict-item]


async def test_a_shard_that_is_down_fails_only_its_rooms(
    clients: list[RedisClient], prefix: str
) -> None:
    nowhere = connect(f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    try:
        rooms, window = sharded([clients[0], nowhere], prefix)
        north, south = room_on(0, "north"), room_on(1, "south")
        hub = await rooms.open_hub()
        with pytest.raises(RedisConnectionError):
            await rooms.renew(hub, [north, south])
        # The live shard's room was renewed all the same, and its messages flow.
        assert await clients[0].zscore(f"{prefix}hubs:{north}", hub) is not None
        await window.seed(north, 0)
        assert await rooms.append_and_deliver(window, [envelope(north, "hi")], {}) == [1]
        [event] = await rooms.receive(hub, 10, 0)
        assert [e["message"] for e in event["envelopes"]] == ["hi"]  # type: ignore[typeddict-item]
        with pytest.raises(RedisConnectionError):
            await window.append([envelope(south, "lost?")])
    finally:
        await nowhere.aclose(close_connection_pool=True)


async def test_presence_on_a_live_shard_is_refreshed_while_another_is_down(
    clients: list[RedisClient], prefix: str
) -> None:
    nowhere = connect(f"redis://127.0.0.1:{free_port()}/0")
    try:
        store = ShardedStore(
            [RedisStore(clients[0], prefix=prefix), RedisStore(nowhere, prefix=prefix)], NAMES
        )
        north, south = room_on(0, "north"), room_on(1, "south")
        member = Member(key="ws:1", kind="browser", name="ann", since="2026-12-02T00:00:00Z")
        await store.add(north, member, expires=100.0, limit=10)
        await store.touch_all({north: ["ws:1"], south: ["ws:2"]}, 5000.0)  # south's is logged
        assert await clients[0].zscore(f"{prefix}expiry:{north}", "ws:1") == 5000.0
        assert [m.key for m in await store.members(north, now=1000.0)] == ["ws:1"]
        assert await store.expired(now=6000.0) != []  # the live shard is swept all the same
    finally:
        await nowhere.aclose(close_connection_pool=True)
