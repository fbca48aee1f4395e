"""Where the gateway's processes share state: one Redis (``REDIS_URL``, or the master a set of
Sentinels names), or nothing at all.

With a Redis, rooms travel between processes on it (`gateway.transport`), and history, presence
and the bridge workers' heartbeats live in it, under keys the gateway names itself. Without one
(``rungateway`` on its own), the gateway is one process and keeps all of that in memory.

With Sentinels (``REDIS_SENTINELS``, ``REDIS_SENTINEL_MASTER``) every connection asks them for
the master when it opens, so the gateway follows a failover: connections to the old master
fail, and the next ones reach the promoted replica.

Each connection to a master checks, when it opens, whether that Redis is still the one the
gateway last wrote to (its replication id, which a promoted replica and a restarted server
change). If not, it moves the gateway's *epoch*: writes the old master acknowledged but never
replicated may be gone, so the next message of every room skips its seq past them
(`gateway.history`) instead of numbering a second message with a seq a browser already saw.

The gateway opens its own client for each event loop: Redis connections belong to the loop that
opened them. The channel layer (channels-redis) keeps its own connections, for the channels
Channels needs and the ``mqtt-bridge`` channel; nothing here reads them.
"""

import asyncio
import functools
import hashlib
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

import redis
import redis.sentinel
from django.conf import settings
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool

from gateway import metrics
from gateway.conf import gateway_settings

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")
S = TypeVar("S")

# Connections per client (per process and event loop), and how long a burst of operations waits
# for one of them before failing like an unreachable Redis. redis-py's own pool fails at once
# past its limit, which a burst of a few hundred WebSocket handshakes reaches.
POOL_CONNECTIONS = 100
POOL_WAIT_SECONDS = 10.0
# A hub blocks on its inbox for up to `gateway.transport.BLOCK_SECONDS` (5 s); reads must not
# time out before the block does.
SOCKET_TIMEOUT_SECONDS = 15.0
CONNECT_TIMEOUT_SECONDS = 5.0
SENTINEL_TIMEOUT_SECONDS = 2.0  # for each question to a Sentinel
# How far a room's seq (and presence version) skips on its first change after Redis's master
# changed: past what the old master may have given out without replicating it (a failover
# loses at most the writes of its replication lag).
EPOCH_SKIP = 10_000
# What a rediss:// URL may add through Sentinels (redis-py's names): a private CA, a client
# certificate, whether the server's certificate is checked.
TLS_OPTIONS = frozenset({"ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs"})

# Moves the epoch when the master is not the one last written to. KEYS: the replication id
# last seen, the epoch. ARGV: this master's replication id. Returns the epoch.
_EPOCH_LUA = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1])
  return redis.call('INCR', KEYS[2])
end
return tonumber(redis.call('GET', KEYS[2]) or '0')
"""


MAIN_SHARD = "main"  # the name of ``REDIS_URL``'s (or ``REDIS_SENTINEL_MASTER``'s) shard
SHARD_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")


def parse_shards(text: str, *, sentinels: bool) -> tuple[tuple[str, str], ...]:
    """``REDIS_SHARDS``: more Redis servers for rooms, each ``(name, URL)``.

    Without Sentinels each entry is ``name=redis://host:port/db``; with them it is the name of
    a master the same Sentinels monitor (its URL is then ``""``: ``REDIS_URL`` gives the
    password, TLS and database of every shard).

    Raises:
        ValueError: naming the entry that is wrong.
    """
    shards: list[tuple[str, str]] = []
    for entry in (part.strip() for part in text.split(",") if part.strip()):
        name, equals, url = (part.strip() for part in entry.partition("="))
        shown = f"{name}={_without_password(url)}" if equals else name
        if sentinels and equals:
            raise ValueError(
                f"{shown!r}: with REDIS_SENTINELS a shard is the name of a master they "
                "monitor, without a URL"
            )
        if not sentinels and not url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"{shown!r} is not name=redis://host:port/db (or rediss://)")
        if not SHARD_NAME.fullmatch(name) or name == MAIN_SHARD:
            raise ValueError(
                f"{name!r} is not a shard's name: 1-32 of a-z, 0-9, '-' and '_', not "
                f"{MAIN_SHARD!r} (the name of REDIS_URL's shard)"
            )
        if any(name == seen for seen, _ in shards):
            raise ValueError(f"shard {name!r} is named twice")
        shards.append((name, url))
    return tuple(shards)


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if not parts.password:
        return url
    return parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")).geturl()


@functools.lru_cache(maxsize=65_536)
def shard_of(room: str, names: tuple[str, ...]) -> int:
    """The index in ``names`` of the shard that holds ``room``: rendezvous hashing, so that
    adding a shard moves only the rooms it now wins (about one in as many shards as there
    are then), and the order the shards are named in does not matter."""
    if len(names) == 1:
        return 0
    best, chosen = b"", 0
    for index, name in enumerate(names):
        score = hashlib.blake2b(f"{name}\0{room}".encode(), digest_size=8).digest()
        if score > best:
            best, chosen = score, index
    return chosen


def split_by_shard(
    items: Iterable[T], room_of: Callable[[T], str], names: tuple[str, ...]
) -> dict[int, list[T]]:
    """``items`` by the shard of their room, each shard's in their order."""
    by_shard: dict[int, list[T]] = {}
    for item in items:
        by_shard.setdefault(shard_of(room_of(item), names), []).append(item)
    return by_shard


class Sharded(Generic[S]):
    """One ``S`` per shard (a window, a store, a transport), each room's being its shard's."""

    def __init__(self, shards: Sequence[S], names: tuple[str, ...]) -> None:
        self.shards = list(shards)
        self.names = names

    def index(self, room: str) -> int:
        """The index of ``room``'s shard (`shard_of`)."""
        return shard_of(room, self.names)

    def for_room(self, room: str) -> S:
        return self.shards[shard_of(room, self.names)]

    def split(self, items: Iterable[T], room_of: Callable[[T], str]) -> dict[int, list[T]]:
        """``items`` by the index of their room's shard (`split_by_shard`)."""
        return split_by_shard(items, room_of, self.names)


async def on_each(calls: Sequence[Awaitable[R]]) -> list[R]:
    """Run ``calls`` (one per shard) side by side; all of them run even when one fails (a
    shard that is down must not stop the others), then the first failure is raised."""
    results = await asyncio.gather(*calls, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results  # type: ignore[return-value]


def parse_sentinels(text: str) -> tuple[tuple[str, int], ...]:
    """``host:port,host:port,...`` as addresses.

    Raises:
        ValueError: naming the entry that is not ``host:port``.
    """
    addresses = []
    for entry in (part.strip() for part in text.split(",")):
        host, _, port = entry.rpartition(":")
        host = host.strip("[]")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{entry!r} is not host:port (e.g. sentinel-1:26379)")
        addresses.append((host, int(port)))
    if not addresses:
        raise ValueError("no Sentinel is named")
    return tuple(addresses)


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """The Redis the processes share: a URL, or a master that Sentinels name.

    Attributes:
        url: ``redis://``, ``rediss://`` (TLS) or ``unix://``. With Sentinels, only its scheme,
            user, password and database are used: the Sentinels give the host.
        sentinels: Sentinels' addresses; empty for a Redis at ``url``.
        master: the name the Sentinels monitor the master under.
        sentinel_password: the Sentinels' own password (their ``requirepass``), if any.
    """

    url: str
    sentinels: tuple[tuple[str, int], ...] = ()
    master: str = ""
    sentinel_password: str | None = None

    def _parts(self) -> dict[str, Any]:
        """The connection options of ``url`` that apply through Sentinels.

        Raises:
            ValueError: the database is not a number, or an option is not one of
                `TLS_OPTIONS` (with ``rediss://``).
        """
        parts = urlsplit(self.url)
        database = parts.path.strip("/") or "0"
        if not database.isdigit():
            raise ValueError(f"the database must be a number, not {database!r}")
        options: dict[str, Any] = {"db": int(database)}
        if parts.username:
            options["username"] = unquote(parts.username)
        if parts.password:
            options["password"] = unquote(parts.password)
        return options | self._tls()

    def _tls(self) -> dict[str, Any]:
        parts = urlsplit(self.url)
        query = parse_qs(parts.query)
        unknown = sorted(set(query) - (TLS_OPTIONS if parts.scheme == "rediss" else set()))
        if unknown:
            allowed = ", ".join(sorted(TLS_OPTIONS))
            raise ValueError(f"unknown options {unknown}: with rediss://, only {allowed}")
        if parts.scheme != "rediss":
            return {}
        return {"ssl": True, **{name: values[-1] for name, values in query.items()}}

    def _sentinel_options(self) -> dict[str, Any]:
        """How to reach the Sentinels: over TLS, as the servers, with ``rediss://``."""
        options: dict[str, Any] = {
            "socket_timeout": SENTINEL_TIMEOUT_SECONDS,
            "socket_connect_timeout": SENTINEL_TIMEOUT_SECONDS,
        }
        if self.sentinel_password:
            options["password"] = self.sentinel_password
        return options | self._tls()

    def describe(self) -> str:
        """Where the Redis is, without its password."""
        if self.sentinels:
            names = ",".join(f"{host}:{port}" for host, port in self.sentinels)
            return f"master {self.master!r} of Sentinels {names}"
        parts = urlsplit(self.url)
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{parts.hostname or ''}{port}"

    def connect(self, on_connect: Callable[[AbstractConnection], Any] | None = None) -> Redis:
        """A client whose pool queues a burst instead of failing it; ``on_connect`` runs on
        each new connection once it is ready."""
        options: dict[str, Any] = {
            "max_connections": POOL_CONNECTIONS,
            "timeout": POOL_WAIT_SECONDS,
            "socket_timeout": SOCKET_TIMEOUT_SECONDS,
            "socket_connect_timeout": CONNECT_TIMEOUT_SECONDS,
        }
        if on_connect is not None:
            options["redis_connect_func"] = _after_handshake(on_connect)
        if not self.sentinels:
            return Redis(connection_pool=BlockingConnectionPool.from_url(self.url, **options))
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            self.sentinels, sentinel_kwargs=self._sentinel_options()
        )
        pool = _BlockingSentinelPool(  # type: ignore[no-untyped-call]
            self.master, sentinel, **options, **self._parts()
        )
        return Redis(connection_pool=pool)

    def connect_sync(self) -> "redis.Redis":
        """A blocking client, for code that is not on an event loop."""
        options = {"socket_timeout": 5.0, "socket_connect_timeout": 5.0}
        if not self.sentinels:
            return redis.Redis.from_url(self.url, **options)
        sentinel = redis.sentinel.Sentinel(  # type: ignore[no-untyped-call]
            self.sentinels, sentinel_kwargs=self._sentinel_options()
        )
        client: redis.Redis = sentinel.master_for(  # type: ignore[no-untyped-call]
            self.master, **options, **self._parts()
        )
        return client

    def layer_host(self) -> dict[str, Any]:
        """The channel layer's host entry (channels-redis takes Sentinels the same way)."""
        # channels-redis blocks on BZPOPMIN for 5 s; redis-py's default socket timeout is also
        # 5 s, so under load a receive would time out and crash the worker.
        timeouts = {"socket_timeout": 15, "socket_connect_timeout": 5}
        if not self.sentinels:
            return {"address": self.url, **timeouts}
        return {
            "sentinels": list(self.sentinels),
            "master_name": self.master,
            "sentinel_kwargs": self._sentinel_options(),
            **timeouts,
            **self._parts(),
        }


class _BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """redis-py's Sentinel pool, waiting for a free connection like `BlockingConnectionPool`
    instead of failing at its limit, and closing its connections to the Sentinels with its
    own."""

    async def disconnect(self, inuse_connections: bool = True) -> None:
        await super().disconnect(inuse_connections)
        if inuse_connections:  # closing, not following a new master
            await self.sentinel_manager.aclose()


def _after_handshake(
    then: Callable[[AbstractConnection], Any],
) -> Callable[[AbstractConnection], Any]:
    async def connected(connection: AbstractConnection) -> None:
        await connection.on_connect()  # what redis-py does when given no function of its own
        await then(connection)

    return connected


def connect(url: str) -> Redis:
    """A client of the Redis at ``url`` whose pool queues a burst instead of failing it."""
    return RedisTarget(url).connect()


def redis_target() -> RedisTarget | None:
    """The Redis the processes share, or None for a gateway of one process."""
    sentinels = getattr(settings, "REDIS_SENTINELS", ())
    url = getattr(settings, "REDIS_URL", None)
    if sentinels:
        return RedisTarget(
            url=str(url or "redis://"),
            sentinels=tuple(sentinels),
            master=str(settings.REDIS_SENTINEL_MASTER),
            sentinel_password=getattr(settings, "REDIS_SENTINEL_PASSWORD", None) or None,
        )
    return RedisTarget(url=str(url)) if url else None


def shard_names() -> tuple[str, ...]:
    """The names of the shards rooms spread over: the main one first (``REDIS_SHARDS``)."""
    return (MAIN_SHARD, *(name for name, _ in getattr(settings, "REDIS_SHARDS", ())))


def shard_targets() -> tuple[RedisTarget, ...]:
    """The Redis of each shard, in the order of `shard_names`; none without Redis."""
    main = redis_target()
    if main is None:
        return ()
    shards: list[RedisTarget] = [main]
    for name, url in getattr(settings, "REDIS_SHARDS", ()):
        if main.sentinels:
            shards.append(RedisTarget(main.url, main.sentinels, name, main.sentinel_password))
        else:
            shards.append(RedisTarget(url))
    return tuple(shards)


def shard_clients() -> list[Redis]:
    """This event loop's client of each shard, in the order of `shard_names`."""
    return [redis_client(shard) for shard in range(len(shard_names()))]


def uses_redis() -> bool:
    """Whether the gateway's processes share a Redis."""
    return redis_target() is not None


def per_loop(cache: dict[tuple[Any, Any, int], T], make: Callable[[], T]) -> T:
    """The object ``make`` builds for the running event loop and the configured Redis, built
    once: what holds Redis connections, or tasks, belongs to one loop."""
    key = (redis_target(), getattr(settings, "REDIS_SHARDS", ()), id(asyncio.get_running_loop()))
    found = cache.get(key)
    if found is None:
        found = cache[key] = make()
    return found


class ReplicaWait:
    """Whether a write must wait for a replica: only while the master reports one connected
    (asked at most once a second; a master without replicas would make every wait time out).

    Attributes:
        timeout_ms: how long a wait lasts at most; 0 never waits (``REDIS_REPLICA_WAIT_MS``).
    """

    ASK_SECONDS = 1.0

    def __init__(self, timeout_ms: int) -> None:
        self.timeout_ms = timeout_ms
        self._asked: float | None = None
        self._replicas = 0

    async def wanted(self, client: Redis) -> bool:
        if not self.timeout_ms:
            return False
        now = time.monotonic()
        if self._asked is None or now - self._asked >= self.ASK_SECONDS:
            self._asked = now
            role = await client.execute_command("ROLE")  # type: ignore[no-untyped-call]
            self._replicas = len(role[2]) if role and role[0] in (b"master", "master") else 0
        return self._replicas > 0

    async def run(self, client: Redis, command: tuple[Any, ...]) -> Any:
        """``command``'s reply; first, if `wanted`, the command is followed on its connection by
        a ``WAIT`` for one replica (counted if it times out: the write was not confirmed)."""
        if not await self.wanted(client):
            return await client.execute_command(*command)  # type: ignore[no-untyped-call]
        async with client.pipeline(transaction=False) as pipe:
            pipe.execute_command(*command)
            pipe.execute_command("WAIT", 1, self.timeout_ms)
            reply, replicas = await pipe.execute()
        if not replicas:
            self._asked = None  # the replica may be gone (a failover): ask the master again
            metrics.inc("redis_replica_wait_timeouts")
            logger.warning(
                "no replica confirmed a write within %d ms (REDIS_REPLICA_WAIT_MS): a failover "
                "now could lose it",
                self.timeout_ms,
            )
        return reply


def epoch_keys(prefix: str) -> tuple[str, str]:
    """The keys of the replication id last written to and of the epoch, under ``prefix``."""
    return f"{prefix}replid", f"{prefix}epoch"


def _replication_id(info: bytes | str) -> tuple[str, str]:
    """A master's role and replication id, from its ``INFO replication``."""
    text = info.decode() if isinstance(info, bytes) else str(info)
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    return fields.get("role", "").strip(), fields.get("master_replid", "").strip()


def epoch_check(prefix: str, shard: str = MAIN_SHARD) -> Callable[[AbstractConnection], Any]:
    """What each new connection runs first: move the epoch under ``prefix`` if this Redis (of
    ``shard``) is not the one last written to."""
    replid_key, epoch_key = epoch_keys(prefix)

    async def check(connection: AbstractConnection) -> None:
        await connection.send_command("INFO", "replication")
        role, replid = _replication_id(await connection.read_response())
        if role != "master" or not replid:
            return  # a replica refuses writes anyway; the next connection asks again
        await connection.send_command("EVAL", _EPOCH_LUA, 2, replid_key, epoch_key, replid)
        epoch = int(await connection.read_response())
        seen = _epoch_seen.get(shard)
        if seen is not None and epoch > seen:
            metrics.inc("redis_epochs")
            logger.warning(
                "Redis's master changed (a failover, or a restart): epoch %d of shard %s; each "
                "of its rooms' next seq skips past what the old master may have numbered",
                epoch,
                shard,
            )
        _epoch_seen[shard] = max(epoch, seen or 0)

    return check


_epoch_seen: dict[str, int] = {}  # per shard, the highest epoch this process's connections met
_clients: dict[str, dict[tuple[Any, Any, int], Redis]] = {}  # per shard, per loop


def redis_client(shard: int = 0) -> Redis:
    """This event loop's client of the shared Redis, or of shard ``shard`` (`shard_names`).

    Raises:
        RuntimeError: no Redis is configured (check `uses_redis` first).
    """
    if shard == 0:
        target = redis_target()
        if target is None:
            raise RuntimeError(
                "REDIS_URL is not set: this gateway shares nothing between processes"
            )
    else:
        target = shard_targets()[shard]
    prefix = f"gateway:{gateway_settings().gateway_id}:"
    name = shard_names()[shard]
    clients = _clients.setdefault(name, {})
    return per_loop(clients, lambda: target.connect(epoch_check(prefix, name)))
