"""What the gateway needs to know about its channel layer, in one place."""

import asyncio
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from channels.exceptions import ChannelFull
from channels.layers import BaseChannelLayer
from channels_redis.core import RedisChannelLayer
from channels_redis.pubsub import RedisPubSubChannelLayer
from channels_redis.utils import decode_hosts
from redis.asyncio import BlockingConnectionPool, Redis

T = TypeVar("T")

# Connections per pool (per process, event loop and Redis host), and how long a burst of
# operations waits for one of them before failing like an unreachable Redis. redis-py's own
# pool fails at once past 100, which a burst of a few hundred WebSocket handshakes reaches.
POOL_CONNECTIONS = 100
POOL_WAIT_SECONDS = 10.0


def waiting_pool(host: dict[str, Any]) -> BlockingConnectionPool:
    """A pool for ``host`` (a channels-redis host entry) that queues when all are busy."""
    options = {"max_connections": POOL_CONNECTIONS, "timeout": POOL_WAIT_SECONDS, **host}
    return BlockingConnectionPool.from_url(options.pop("address"), **options)


# channels-redis's send, in one round trip instead of four: drop expired messages, refuse if the
# channel is at capacity (returns 0), else queue the message and renew the channel's expiry.
_SEND = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], 0, ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
"""

# channels-redis's receive step while messages are waiting, in one round trip instead of three:
# put back what an interrupted receive left in the backup queue, pop the oldest message and keep
# it in the backup until it has been handled. Nothing waiting: false, and the receive blocks.
_POP = """
local backed_up = redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')
for i = #backed_up, 1, -2 do
  redis.call('ZADD', KEYS[1], backed_up[i], backed_up[i - 1])
end
redis.call('DEL', KEYS[2])
local popped = redis.call('ZPOPMIN', KEYS[1])
if #popped == 0 then return false end
redis.call('ZADD', KEYS[2], popped[2], popped[1])
return popped[1]
"""


class CoreLayer(RedisChannelLayer):  # type: ignore[misc]
    """channels-redis's core layer, with pools that queue a burst instead of failing it, and
    fewer round trips per message.

    The hub of each process reads a channel of its own, and every burst of device messages is
    a ``send`` to it and a receive from it; channels-redis spends four commands on each.
    """

    def create_pool(self, index: int) -> BlockingConnectionPool:
        return waiting_pool(self.hosts[index])

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        """As channels-redis sends (same keys, same format, `ChannelFull` at capacity)."""
        assert isinstance(message, dict), "message is not a dict"
        assert self.require_valid_channel_name(channel), "Channel name not valid"
        assert "__asgi_channel__" not in message
        name = channel
        if "!" in channel:
            message = {**message, "__asgi_channel__": channel}
            name = self.non_local_name(channel)
            index = self.consistent_hash(channel)
        else:
            index = next(self._send_index_generator)
        now = time.time()
        queued = await self.connection(index).eval(
            _SEND,
            1,
            self.prefix + name,
            int(now) - int(self.expiry),
            self.get_capacity(channel),
            now,
            self.serialize(message),
            int(self.expiry),
        )
        if not queued:
            raise ChannelFull

    async def _brpop_with_clean(
        self,
        index: int,
        channel: str,
        timeout: float,  # noqa: ASYNC109 - channels-redis names it so
    ) -> Any:
        """channels-redis's receive step: one script when a message is waiting already, else
        the blocking pop as channels-redis does it (the script has cleaned the backup)."""
        connection = self.connection(index)
        backup = self._backup_channel_name(channel)
        member = await connection.eval(_POP, 2, channel, backup)
        if member is not None:
            return member
        popped = await connection.bzpopmin(channel, timeout=timeout)
        if popped is None:
            return None
        _, member, score = popped
        await connection.zadd(backup, {member: float(score)})
        return member


def uses_redis(layer: BaseChannelLayer | None) -> bool:
    """Whether ``layer`` is a Redis channel layer (shared by processes), not the in-memory one."""
    return isinstance(layer, RedisChannelLayer | RedisPubSubChannelLayer)


def every_reader_gets_each_message(layer: BaseChannelLayer | None) -> bool:
    """Whether each reader of a named channel gets its own copy (the pub/sub layer does)."""
    return isinstance(layer, RedisPubSubChannelLayer)


def shows_group_members(layer: BaseChannelLayer | None) -> bool:
    """Whether the gateway can read ``layer``'s group members (the core layer keeps them)."""
    return isinstance(layer, RedisChannelLayer)


async def members_of(layer: RedisChannelLayer, groups: Iterable[str]) -> dict[str, list[str]]:
    """The channels in each of ``groups`` now, one pipeline per Redis shard.

    As channels-redis's own ``group_send`` sees them: members added longer than the layer's
    group expiry ago have left.
    """
    joined_after = int(time.time()) - int(layer.group_expiry)
    by_shard: dict[int, list[str]] = {}
    for group in groups:
        by_shard.setdefault(layer.consistent_hash(group), []).append(group)
    members: dict[str, list[str]] = {}
    for index, names in by_shard.items():
        async with layer.connection(index).pipeline(transaction=False) as pipe:
            for name in names:
                pipe.zrangebyscore(layer._group_key(name), joined_after, "+inf")
            found = await pipe.execute()
        for name, channels in zip(names, found, strict=True):
            members[name] = [c.decode() if isinstance(c, bytes) else str(c) for c in channels]
    return members


def per_layer(cache: dict[tuple[int, int], T], layer: BaseChannelLayer, make: Callable[[], T]) -> T:
    """The object ``make`` builds for ``layer`` and the running event loop, built once.

    Redis connections belong to the loop that opened them, so helpers that use the layer's
    connections are kept per layer and per loop.
    """
    key = (id(layer), id(asyncio.get_running_loop()))
    found = cache.get(key)
    if found is None:
        found = cache[key] = make()
    return found


_clients: dict[tuple[int, int], Any] = {}


def redis_connection(layer: BaseChannelLayer, key: str | None = None) -> Any:
    """A Redis client beside ``layer`` for the gateway's own keys (history, presence, ...).

    With the core layer, the layer's own connection for the shard ``key`` hashes to. The
    pub/sub layer keeps its connections to itself, so the gateway opens one client per event
    loop to its first host.
    """
    if isinstance(layer, RedisChannelLayer):
        return layer.connection(layer.consistent_hash(key) if key is not None else 0)
    return per_layer(_clients, layer, lambda: _pubsub_client(layer))


def _pubsub_client(layer: Any) -> Redis:
    hosts = decode_hosts(getattr(layer, "_kwargs", {}).get("hosts"))
    return Redis(connection_pool=waiting_pool(hosts[0]))
