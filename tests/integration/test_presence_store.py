"""Presence in both stores: a room lists at most its limit of members, newcomers past it are
counted, not announced; every change takes the room's next version, with the count after it;
snapshots and pages read what is there; and the set of rooms with members shrinks as rooms
empty."""

import time
import uuid
from collections.abc import AsyncIterator

import pytest

from gateway import metrics
from gateway.presence import Change, LocalStore, Member, Presence, RedisStore, Snapshot, Store
from gateway.shared import connect
from gateway.transport import LocalTransport
from tests.support.processes import Redis


@pytest.fixture(params=["redis", "local"])
async def store(request: pytest.FixtureRequest, redis_server: Redis) -> AsyncIterator[Store]:
    if request.param == "local":
        yield LocalStore()
        return
    client = connect(redis_server.url)
    yield RedisStore(client, prefix=f"test:{uuid.uuid4().hex}:presence:")
    await client.aclose(close_connection_pool=True)


def member(key: str) -> Member:
    return Member(key=key, kind="browser", name=key, since="2026-12-01T00:00:00Z")


async def test_a_full_room_refuses_newcomers_but_renews_those_it_has(store: Store) -> None:
    later = time.time() + 60
    added = [await store.add("r", member(f"k{n}"), later, 3) for n in range(3)]
    assert added == [("added", Change(n + 1, n + 1)) for n in range(3)]
    assert await store.add("r", member("k3"), later, 3) == ("full", None)
    assert await store.add("r", member("k0"), later + 1, 3) == ("renewed", None)
    assert await store.add("other", member("k3"), later, 3) == ("added", Change(1, 1))  # per room
    assert sorted(m.key for m in await store.members("r", time.time())) == ["k0", "k1", "k2"]


async def test_each_change_takes_the_next_version_and_a_snapshot_reads_at_one(
    store: Store,
) -> None:
    later = time.time() + 60
    for n in range(4):
        await store.add("r", member(f"k{n}"), later, 10)
    removed = await store.remove("r", "k1")
    assert removed is not None
    assert (removed[0].key, removed[1]) == ("k1", Change(5, 3))
    assert await store.remove("r", "k1") is None  # once
    whole = await store.snapshot("r", 3)
    assert (whole.count, whole.version) == (3, 5)
    assert whole.members is not None
    assert sorted(m.key for m in whole.members) == ["k0", "k2", "k3"]
    assert await store.snapshot("r", 2) == Snapshot(None, 3, 5)  # more than asked: the count
    assert await store.snapshot("empty", 5) == Snapshot([], 0, 0)


async def test_pages_list_every_member_once_the_cursor_runs_out(store: Store) -> None:
    later = time.time() + 60
    keys = {f"k{n:03}" for n in range(250)}
    for key in keys:
        await store.add("big", member(key), later, 1000)
    await store.add("big", member("gone"), time.time() - 1, 1000)  # expired: not listed
    seen: list[str] = []
    cursor: str | None = "0"
    for _ in range(100):  # bounded: a few pages of about 100
        assert cursor is not None
        page, cursor, count = await store.page("big", cursor, 100, time.time())
        assert count == len(keys) + 1  # the expired member is counted until it is swept
        seen += [m.key for m in page]
        if cursor is None:
            break
    assert cursor is None
    assert set(seen) == keys
    assert len(seen) == len(keys)  # nothing changed meanwhile: nothing twice


async def test_presence_past_the_limit_is_counted_and_not_announced(store: Store) -> None:
    rooms = LocalTransport(capacity=100)
    watcher = await rooms.open_hub()
    await rooms.join(watcher, "lobby")
    presence = Presence(store, rooms, ttl=30, max_members=2)
    before = metrics.get("presence_refused", "browser")
    for n in range(3):
        await presence.join("lobby", f"ws:{n}", "browser", f"user{n}", hold=False)
    events = await rooms.receive(watcher, 10)
    assert [e["member"]["key"] for e in events if e["type"] == "room.presence"] == ["ws:0", "ws:1"]
    assert metrics.get("presence_refused", "browser") == before + 1
    assert [m["key"] for m in await presence.members("lobby")] == ["ws:0", "ws:1"]


async def test_the_rooms_with_members_shrink_as_rooms_empty(redis_server: Redis) -> None:
    client = connect(redis_server.url)
    prefix = f"test:{uuid.uuid4().hex}:presence:"
    store = RedisStore(client, prefix=prefix)
    try:
        await store.add("brief", member("k"), time.time() - 1, 10)  # already expired
        await store.add("lasting", member("k"), time.time() + 60, 10)
        gone = await store.expired(time.time())
        assert [(room, m.key) for room, m, _ in gone] == [("brief", "k")]
        rooms = {r.decode() for r in await client.smembers(f"{prefix}rooms")}
        assert rooms == {"lasting"}
    finally:
        await client.aclose(close_connection_pool=True)
