"""What the gateway needs to know about its channel layer, in one place."""

import asyncio
import os
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import msgpack
from channels.exceptions import ChannelFull
from channels.layers import BaseChannelLayer
from channels_redis.core import RedisChannelLayer
from channels_redis.pubsub import RedisPubSubChannelLayer
from channels_redis.serializers import MsgPackSerializer
from channels_redis.utils import decode_hosts
from redis.asyncio import BlockingConnectionPool, Redis

from gateway.events import ROOM_MESSAGES

T = TypeVar("T")

# Envelopes per channel-layer event at most, which bounds an event's size.
EVENT_ENVELOPES = 64

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

    async def new_own_channel(self) -> str:
        """A channel only this process reads, by `receive_many` (not by ``receive``)."""
        return f"own.{self.client_prefix}.{uuid.uuid4().hex}"

    async def receive_many(self, channel: str, limit: int) -> list[dict[str, Any]]:
        """Up to ``limit`` messages waiting on ``channel`` (from `new_own_channel`), oldest
        first, in one round trip; when none is waiting, the first to arrive. Empty when none
        came within channels-redis's blocking timeout.

        A reader that is cancelled here loses what was popped: only a process that stops
        cancels it, and the sockets it served go with it.
        """
        key = self.prefix + channel
        connection = self.connection(0)
        members = [member for member, _ in await connection.zpopmin(key, limit)]
        if not members:
            popped = await connection.bzpopmin(key, timeout=self.brpop_timeout)
            if popped is None:
                return []
            members = [popped[1]]
        messages = [self.deserialize(member) for member in members]
        for message in messages:
            message.pop("__asgi_channel__", None)
        return messages

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


@dataclass(frozen=True, slots=True)
class ScriptSends:
    """What a Redis script needs to queue events on the core layer's channels as
    `CoreLayer.send` queues them: the same keys, format, capacity and expiries.

    The script reads a group's members and, for each member channel, builds one event: the
    layer's prefix (`random_prefix`, then a counter), `EVENT_HEAD`, the envelopes (`packed`)
    and the fields only it knows (``__asgi_channel__``, as channels-redis adds it, and the
    envelopes' ``seqs``).
    """

    layer: "CoreLayer"
    channel_prefix: str
    capacity: int
    expiry: int
    group_expiry: int

    def group_key(self, group: str) -> bytes:
        key: bytes = self.layer._group_key(group)
        return key

    def random_prefix(self) -> bytes:
        """The random start of the prefix channels-redis puts before each message; a script
        ends it with a counter of its own, three bytes."""
        random: bytes = os.urandom(self.layer._serializer.random_prefix_length - 3)
        return random

    @staticmethod
    def packed(envelopes: Iterable[Any]) -> bytes:
        """Envelopes as the elements of an event's ``envelopes`` array."""
        return b"".join(msgpack.packb(envelope) for envelope in envelopes)


# An event's first bytes after the prefix: a map of four fields (type, envelopes,
# ``__asgi_channel__``, ``seqs``), the type and the key ``envelopes``, whose array follows.
EVENT_HEAD: bytes = (
    b"\x84" + msgpack.packb("type") + msgpack.packb(ROOM_MESSAGES) + msgpack.packb("envelopes")
)


def script_sends(layer: BaseChannelLayer | None) -> ScriptSends | None:
    """How a script can send on ``layer``; None unless it is the gateway's core layer on one
    Redis, serialising with msgpack, unencrypted, with one capacity for every channel."""
    if not isinstance(layer, CoreLayer) or layer.ring_size != 1 or layer.channel_capacity:
        return None
    serializer = layer._serializer
    if not isinstance(serializer, MsgPackSerializer) or serializer.crypter is not None:
        return None
    if serializer.random_prefix_length < 3:  # room for the script's counter
        return None
    return ScriptSends(
        layer=layer,
        channel_prefix=layer.prefix,
        capacity=int(layer.capacity),
        expiry=int(layer.expiry),
        group_expiry=int(layer.group_expiry),
    )


def reads_many(layer: BaseChannelLayer | None) -> bool:
    """Whether a channel of ``layer``'s can be read many messages at a time
    (`CoreLayer.receive_many`)."""
    return isinstance(layer, CoreLayer) and layer.ring_size == 1


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
