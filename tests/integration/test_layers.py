"""The gateway's Redis pools against a real Redis."""

import asyncio

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
