"""A message the broker may deliver again enters its room once, in both kinds of window.

The Redis window records the id in the same script that gives the message its ``seq``, and
marks it once the message was sent to its room. A flagged redelivery of a sent one is a copy;
of one appended but not sent (a crash in between), it keeps its first seq, to be sent now. A
fresh delivery that reuses an old id (the broker reuses packet ids once they are acknowledged)
must go through.
"""

import uuid
from collections.abc import AsyncIterator

import pytest

from gateway.envelope import Envelope, new_envelope
from gateway.history import COPY, ONCE_PER_ROOM, LocalWindow, RedisWindow, Window
from gateway.shared import connect
from tests.support.processes import Redis


@pytest.fixture(params=["redis", "local"])
async def window(request: pytest.FixtureRequest, redis_server: Redis) -> AsyncIterator[Window]:
    if request.param == "local":
        yield LocalWindow(window=100)
        return
    client = connect(redis_server.url)
    prefix = f"test:{uuid.uuid4().hex}:"  # a history of its own on the shared Redis
    yield RedisWindow(client, prefix=prefix, window=100, ttl_seconds=60)
    await client.aclose(close_connection_pool=True)


def envelope(room: str, message_id: str, text: str = "m") -> Envelope:
    return new_envelope(
        room=room, message=text, source="mqtt", sender="d", gateway="g", message_id=message_id
    )


async def test_a_redelivery_of_a_message_sent_before_is_a_copy(window: Window) -> None:
    for room in ("a", "b"):
        await window.seed(room, 0)
    first = await window.append([envelope("a", "m1")], {"m1": False})
    await window.sent([envelope("a", "m1")])
    again = await window.append([envelope("a", "m1")], {"m1": True})
    # The same delivery's id in another room is that room's own message.
    other_room = await window.append([envelope("b", "m1")], {"m1": True})
    assert (first, again, other_room) == ([1], [COPY], [1])
    assert [m["id"] for m in await window.after("a", 0, 10)] == ["m1"]


async def test_a_redelivery_of_one_appended_but_never_sent_keeps_its_first_seq(
    window: Window,
) -> None:
    await window.seed("f", 0)
    assert await window.append([envelope("f", "cut-short")], {"cut-short": False}) == [1]
    # The crash came before the send: the redelivery is to be sent, as seq 1, not appended.
    assert await window.append([envelope("f", "cut-short")], {"cut-short": True}) == [-1]
    assert [m["seq"] for m in await window.after("f", 0, 10)] == [1]
    await window.sent([envelope("f", "cut-short")])
    assert await window.append([envelope("f", "cut-short")], {"cut-short": True}) == [COPY]


async def test_a_redelivery_whose_first_delivery_never_arrived_is_appended(
    window: Window,
) -> None:
    await window.seed("c", 0)
    assert await window.append([envelope("c", "lost-in-a-crash")], {"lost-in-a-crash": True}) == [1]


async def test_a_fresh_delivery_that_reuses_an_old_id_goes_through(window: Window) -> None:
    # Packet ids come round again: the same topic, payload and packet id, a new message.
    await window.seed("d", 0)
    seqs = []
    for _ in range(3):
        seqs.append(await window.append([envelope("d", "reused")], {"reused": False}))
        await window.sent([envelope("d", "reused")])
    assert seqs == [[1], [2], [3]]
    # And a redelivery of the latest is still recognised.
    assert await window.append([envelope("d", "reused")], {"reused": True}) == [COPY]


async def test_messages_without_a_delivery_id_are_never_copies(window: Window) -> None:
    await window.seed("e", 0)
    batch = [envelope("e", "browser-message") for _ in range(2)]
    assert await window.append(batch) == [1, 2]


@pytest.fixture
async def redis_window(redis_server: Redis) -> AsyncIterator[RedisWindow]:
    client = connect(redis_server.url)
    prefix = f"test:{uuid.uuid4().hex}:"
    yield RedisWindow(client, prefix=prefix, window=1000, ttl_seconds=60, max_bytes=20_000)
    await client.aclose(close_connection_pool=True)


async def test_a_room_remembers_a_bounded_number_of_ids_in_two_keys(
    redis_window: RedisWindow,
) -> None:
    await redis_window.seed("busy", 0)
    total = ONCE_PER_ROOM + 500
    for start in range(0, total, 500):
        batch = [envelope("busy", f"id-{n}") for n in range(start, start + 500)]
        await redis_window.append(batch, {e["id"]: False for e in batch})
    client, prefix = redis_window.client, redis_window.prefix
    assert await client.hlen(f"{prefix}once:busy") == ONCE_PER_ROOM
    assert await client.zcard(f"{prefix}once-order:busy") == ONCE_PER_ROOM
    assert len(await client.keys(f"{prefix}once*")) == 2  # not a key per message
    # The newest are still recognised; the oldest, past the bound, are forgotten.
    newest = envelope("busy", f"id-{total - 1}")
    assert await redis_window.append([newest], {newest["id"]: True}) == [-total]
    oldest = envelope("busy", "id-0")
    assert await redis_window.append([oldest], {oldest["id"]: True}) == [total + 1]


async def test_the_redis_window_keeps_a_room_within_its_bytes(redis_window: RedisWindow) -> None:
    await redis_window.seed("big", 0)
    for n in range(60):
        await redis_window.append([envelope("big", f"m{n}", text="\x01" * 100)])
    members = await redis_window.client.zrange(f"{redis_window.prefix}window:big", 0, -1)
    assert 1 < len(members) < 60
    assert sum(len(m) for m in members) <= 20_000
    counted = await redis_window.client.get(f"{redis_window.prefix}window:big:bytes")
    assert int(counted) == sum(len(m) for m in members)
    kept = await redis_window.after("big", 0, 100)
    assert [m["seq"] for m in kept] == list(range(61 - len(kept), 61))
