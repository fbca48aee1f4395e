"""Where the gateway's processes share state: one Redis (``REDIS_URL``), or nothing at all.

With a Redis, rooms travel between processes on it (`gateway.transport`), and history, presence
and the bridge workers' heartbeats live in it, under keys the gateway names itself. Without one
(``rungateway`` on its own), the gateway is one process and keeps all of that in memory.

The gateway opens its own client for each event loop: Redis connections belong to the loop that
opened them. The channel layer (channels-redis) keeps its own connections, for the channels
Channels needs and the ``mqtt-bridge`` channel; nothing here reads them.
"""

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

from django.conf import settings
from redis.asyncio import BlockingConnectionPool, Redis

T = TypeVar("T")

# Connections per client (per process and event loop), and how long a burst of operations waits
# for one of them before failing like an unreachable Redis. redis-py's own pool fails at once
# past its limit, which a burst of a few hundred WebSocket handshakes reaches.
POOL_CONNECTIONS = 100
POOL_WAIT_SECONDS = 10.0
# A hub blocks on its inbox for up to `gateway.transport.BLOCK_SECONDS` (5 s); reads must not
# time out before the block does.
SOCKET_TIMEOUT_SECONDS = 15.0
CONNECT_TIMEOUT_SECONDS = 5.0


def redis_url() -> str | None:
    """The Redis the processes share (``REDIS_URL``), or None for a gateway of one process."""
    url = getattr(settings, "REDIS_URL", None)
    return str(url) if url else None


def uses_redis() -> bool:
    """Whether the gateway's processes share a Redis."""
    return redis_url() is not None


def per_loop(cache: dict[tuple[str | None, int], T], make: Callable[[], T]) -> T:
    """The object ``make`` builds for the running event loop and the configured Redis, built
    once: what holds Redis connections, or tasks, belongs to one loop."""
    key = (redis_url(), id(asyncio.get_running_loop()))
    found = cache.get(key)
    if found is None:
        found = cache[key] = make()
    return found


def connect(url: str) -> Redis:
    """A client of the Redis at ``url`` whose pool queues a burst instead of failing it."""
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=POOL_CONNECTIONS,
        timeout=POOL_WAIT_SECONDS,
        socket_timeout=SOCKET_TIMEOUT_SECONDS,
        socket_connect_timeout=CONNECT_TIMEOUT_SECONDS,
    )
    return Redis(connection_pool=pool)


_clients: dict[tuple[str | None, int], Any] = {}


def redis_client() -> Redis:
    """This event loop's client of the shared Redis.

    Raises:
        RuntimeError: no Redis is configured (check `uses_redis` first).
    """
    url = redis_url()
    if url is None:
        raise RuntimeError("REDIS_URL is not set: this gateway shares nothing between processes")
    client: Redis = per_loop(_clients, lambda: connect(url))
    return client
