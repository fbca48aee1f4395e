"""A burst appended to history and queued to its rooms' channels in one Redis step.

What a process's hub then reads is what channels-redis would have delivered: one event per
member channel, its rooms' envelopes in order, each with the ``seq`` the same step gave it.
"""

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from gateway import metrics
from gateway.envelope import Envelope, new_envelope
from gateway.history import COPY, RedisWindow, ScriptChunk
from gateway.layers import EVENT_ENVELOPES, CoreLayer, ScriptSends, script_sends
from gateway.publish import _chunks
from gateway.rooms import group_name
from tests.support.processes import Redis


@pytest.fixture
async def layer(redis_server: Redis) -> AsyncIterator[CoreLayer]:
    # A prefix of its own: the Redis is shared by the session's tests.
    ours = CoreLayer(hosts=[redis_server.url], prefix=f"t{uuid.uuid4().hex[:8]}", capacity=5)
    yield ours
    await ours.close_pools()


def window(layer: CoreLayer) -> RedisWindow:
    return RedisWindow(layer, prefix=f"{layer.prefix}:", window=1000, ttl_seconds=60)


def envelope(room: str, text: str, message_id: str | None = None) -> Envelope:
    return new_envelope(
        room=room, message=text, source="mqtt", sender="d", gateway="g", message_id=message_id
    )


def chunks(sends: ScriptSends, envelopes: Sequence[Envelope]) -> list[ScriptChunk]:
    """The envelopes (each room's a run, in order) in chunks, as the publish path cuts them."""
    by_room: dict[str, list[Envelope]] = {}
    for item in envelopes:
        by_room.setdefault(item["room"], []).append(item)
    assert [e for batch in by_room.values() for e in batch] == list(envelopes)
    return list(_chunks(sends, by_room))


async def hub(layer: CoreLayer, *rooms: str) -> str:
    channel = await layer.new_own_channel()
    for room in rooms:
        await layer.group_add(group_name(room), channel)
    return channel


async def waiting(layer: CoreLayer, channel: str) -> int:
    count: int = await layer.connection(0).zcard(layer.prefix + channel)
    return count


def texts(event: dict[str, Any]) -> list[tuple[str, Any, int]]:
    envelopes, seqs = event["envelopes"], event["seqs"]
    return [(e["room"], e["message"], seq) for e, seq in zip(envelopes, seqs, strict=True)]


async def test_a_burst_reaches_each_member_channel_as_one_event_in_order(
    layer: CoreLayer,
) -> None:
    sends = script_sends(layer)
    assert sends is not None
    both, only_b = await hub(layer, "a", "b"), await hub(layer, "b")
    history = window(layer)
    for room in ("a", "b"):
        await history.seed(room, 0)
    burst = [envelope("a", "a1"), envelope("a", "a2"), envelope("b", "b1")]

    seqs = await history.append_and_send(burst, {}, chunks(sends, burst), sends)

    assert seqs == [1, 2, 1]
    [event] = await layer.receive_many(both, 10)
    assert event["type"] == "room.messages"
    assert texts(event) == [("a", "a1", 1), ("a", "a2", 2), ("b", "b1", 1)]
    [event] = await layer.receive_many(only_b, 10)
    assert texts(event) == [("b", "b1", 1)]
    # Kept in the window before anyone could see them: a late joiner reads them there.
    assert [m["message"] for m in await history.after("a", 0, 10)] == ["a1", "a2"]


async def test_more_than_an_event_holds_arrives_as_several_events_in_order(
    layer: CoreLayer,
) -> None:
    sends = script_sends(layer)
    assert sends is not None
    channel = await hub(layer, "long")
    history = window(layer)
    await history.seed("long", 0)
    count = 2 * EVENT_ENVELOPES + 22
    burst = [envelope("long", f"m{n}") for n in range(count)]

    await history.append_and_send(burst, {}, chunks(sends, burst), sends)

    events = await layer.receive_many(channel, 10)
    assert [len(e["envelopes"]) for e in events] == [EVENT_ENVELOPES, EVENT_ENVELOPES, 22]
    got = [item for event in events for item in texts(event)]
    assert got == [("long", f"m{n}", n + 1) for n in range(count)]


async def test_a_redelivery_of_a_sent_message_goes_no_further(layer: CoreLayer) -> None:
    sends = script_sends(layer)
    assert sends is not None
    channel = await hub(layer, "qos1")
    history = window(layer)
    await history.seed("qos1", 0)
    first = [envelope("qos1", "reading", message_id="m1")]
    assert await history.append_and_send(first, {"m1": False}, chunks(sends, first), sends) == [1]
    await layer.receive_many(channel, 10)

    again = [envelope("qos1", "reading", message_id="m1")]
    assert await history.append_and_send(again, {"m1": True}, chunks(sends, again), sends) == [COPY]
    assert await waiting(layer, channel) == 0
    assert [m["seq"] for m in await history.after("qos1", 0, 10)] == [1]


async def test_a_room_without_a_counter_is_left_untouched(layer: CoreLayer) -> None:
    sends = script_sends(layer)
    assert sends is not None
    channel = await hub(layer, "seeded", "new")
    history = window(layer)
    await history.seed("seeded", 0)
    burst = [envelope("seeded", "s1"), envelope("new", "n1")]

    assert await history.append_and_send(burst, {}, chunks(sends, burst), sends) is None
    # Nothing half done: the caller seeds the counter and appends the whole burst again.
    assert await history.after("seeded", 0, 10) == []
    assert await waiting(layer, channel) == 0


async def test_a_full_channel_misses_the_burst_and_the_drop_is_counted(
    layer: CoreLayer,
) -> None:
    sends = script_sends(layer)
    assert sends is not None
    full, free = await hub(layer, "busy"), await hub(layer, "busy")
    for n in range(layer.capacity):  # a process that stopped reading
        await layer.send(full, {"type": "room.messages", "envelopes": [], "n": n})
    history = window(layer)
    await history.seed("busy", 0)
    burst = [envelope("busy", "x"), envelope("busy", "y")]
    before = metrics.get("messages_dropped", "channel_full")

    await history.append_and_send(burst, {}, chunks(sends, burst), sends)

    assert metrics.get("messages_dropped", "channel_full") - before == len(burst)
    assert await waiting(layer, full) == layer.capacity
    [event] = await layer.receive_many(free, 10)
    assert [m for _, m, _ in texts(event)] == ["x", "y"]


async def test_receive_many_reads_what_waits_at_once_then_waits_for_the_next(
    layer: CoreLayer,
) -> None:
    channel = await layer.new_own_channel()
    for n in range(3):
        await layer.send(channel, {"type": "t", "n": n})
    assert [m["n"] for m in await layer.receive_many(channel, 2)] == [0, 1]
    assert [m["n"] for m in await layer.receive_many(channel, 2)] == [2]
    later = asyncio.create_task(layer.receive_many(channel, 2))
    await asyncio.sleep(0.2)
    assert not later.done()
    await layer.send(channel, {"type": "t", "n": 3})
    assert [m["n"] for m in await asyncio.wait_for(later, 5)] == [3]


def test_layers_a_script_cannot_send_on_take_the_usual_path() -> None:
    assert script_sends(None) is None
    assert script_sends(CoreLayer(hosts=["redis://a", "redis://b"])) is None  # two shards
    assert script_sends(CoreLayer(channel_capacity={"own.*": 5})) is None
    assert script_sends(CoreLayer(symmetric_encryption_keys=["k" * 32])) is None
    assert script_sends(CoreLayer()) is not None
