"""The gateway's Redis pools against a real Redis."""

import asyncio

import pytest
from channels.exceptions import ChannelFull
from channels_redis.core import RedisChannelLayer
from channels_redis.pubsub import RedisPubSubChannelLayer
from redis.exceptions import MaxConnectionsError

from gateway.layers import POOL_CONNECTIONS, CoreLayer, redis_connection
from tests.support.processes import Redis


async def _burst(layer: RedisChannelLayer | RedisPubSubChannelLayer) -> list[object]:
    # Each BLPOP holds a connection for 0.2 s; three times the pool's connections at once.
    connection = redis_connection(layer, "burst")
    return await asyncio.gather(
        *(connection.blpop([f"burst:{n}"], timeout=0.2) for n in range(3 * POOL_CONNECTIONS)),
        return_exceptions=True,
    )


async def test_a_burst_past_the_pool_waits_for_a_connection_instead_of_failing(
    redis_server: Redis,
) -> None:
    layer = CoreLayer(hosts=[redis_server.url])
    try:
        assert await _burst(layer) == [None] * (3 * POOL_CONNECTIONS)
    finally:
        await layer.close_pools()


async def test_the_stock_pool_fails_the_same_burst(redis_server: Redis) -> None:
    # What the gateway's layer is for: redis-py's pool refuses the 101st connection.
    layer = RedisChannelLayer(hosts=[redis_server.url])
    try:
        failures = [r for r in await _burst(layer) if isinstance(r, MaxConnectionsError)]
        assert failures
    finally:
        await layer.close_pools()


async def test_the_pubsub_layer_configured_as_settings_do_takes_the_burst(
    redis_server: Redis,
) -> None:
    # The gateway's own client beside the pub/sub layer, with the host options settings give.
    host = {"address": redis_server.url, "socket_connect_timeout": 5, "max_connections": 1000}
    layer = RedisPubSubChannelLayer(hosts=[host])
    try:
        assert await _burst(layer) == [None] * (3 * POOL_CONNECTIONS)
    finally:
        await layer.flush()


async def test_a_one_trip_send_is_read_as_channels_redis_sends_and_stops_at_capacity(
    redis_server: Redis,
) -> None:
    ours = CoreLayer(hosts=[redis_server.url], capacity=3)
    stock = RedisChannelLayer(hosts=[redis_server.url], capacity=3)
    try:
        # A process-local channel (a hub's) and a plain one, each read by the stock layer.
        local = await stock.new_channel("hub")
        for n in range(3):
            await ours.send(local, {"type": "room.messages", "n": n})
        with pytest.raises(ChannelFull):
            await ours.send(local, {"type": "room.messages", "n": 3})
        assert [(await stock.receive(local))["n"] for _ in range(3)] == [0, 1, 2]
        await ours.send("bridge.plain", {"type": "mqtt.publish", "n": 9})
        assert (await stock.receive("bridge.plain"))["n"] == 9
        # Both layers keep the channel to the same expiry.
        await ours.send("bridge.plain", {"type": "mqtt.publish"})
        ttl = await redis_connection(ours, "x").ttl(ours.prefix + "bridge.plain")
        assert 0 < ttl <= ours.expiry
    finally:
        await ours.close_pools()
        await stock.close_pools()


async def test_a_one_trip_send_drops_what_expired_before_counting(redis_server: Redis) -> None:
    ours = CoreLayer(hosts=[redis_server.url], capacity=1, expiry=60)
    try:
        key = ours.prefix + "stale.channel"
        await redis_connection(ours, "x").zadd(key, {b"old": 1.0})  # queued long ago
        await ours.send("stale.channel", {"type": "x"})  # not full: the old one expired
        assert await redis_connection(ours, "x").zcard(key) == 1
    finally:
        await ours.close_pools()


async def test_a_receive_of_waiting_messages_keeps_order_and_leaves_no_backup(
    redis_server: Redis,
) -> None:
    ours = CoreLayer(hosts=[redis_server.url])
    stock = RedisChannelLayer(hosts=[redis_server.url])
    try:
        channel = await ours.new_channel("hub")
        for n in range(5):
            await stock.send(channel, {"type": "room.messages", "n": n})
        assert [(await ours.receive(channel))["n"] for _ in range(5)] == [0, 1, 2, 3, 4]
        # One not there yet: the receive blocks for it as channels-redis's does.
        later = asyncio.create_task(ours.receive(channel))
        await asyncio.sleep(0.2)
        assert not later.done()
        await stock.send(channel, {"type": "room.messages", "n": 5})
        assert (await asyncio.wait_for(later, 5))["n"] == 5
        await asyncio.gather(*ours.receive_cleaners)
        key = ours._backup_channel_name(ours.prefix + ours.non_local_name(channel))
        assert await redis_connection(ours, "x").zcard(key) == 0
    finally:
        await ours.close_pools()
        await stock.close_pools()


async def test_what_an_interrupted_receive_left_in_the_backup_comes_first(
    redis_server: Redis,
) -> None:
    ours = CoreLayer(hosts=[redis_server.url])
    try:
        channel = await ours.new_channel("hub")
        key = ours.prefix + ours.non_local_name(channel)
        await ours.send(channel, {"type": "room.messages", "n": 2})
        # A message popped by a receive that was cancelled before handling it.
        first = ours.serialize({"type": "room.messages", "n": 1, "__asgi_channel__": channel})
        await redis_connection(ours, "x").zadd(ours._backup_channel_name(key), {first: 1.0})
        assert [(await ours.receive(channel))["n"] for _ in range(2)] == [1, 2]
    finally:
        await ours.close_pools()
