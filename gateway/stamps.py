"""Stamps: counters that move whenever something a process may have cached changes.

A handshake asks the database what a user may do in a room, what states the room holds, and
what its last messages were, when they are not in Redis. Those answers rarely change, and a
burst of sockets into one room asks the same questions hundreds of times. A process keeps each
answer with the stamp it read *before* asking the database; the answer holds while the stamp is
unchanged. Whatever changes the answer moves the stamp after it commits its change, so the next
reader sees a new stamp and asks again: a revoked grant refuses the very next handshake, in
every process.

The stamps live in the shared Redis (``gateway:<id>:stamp:<name>``), or in this process for a
gateway of one process. A change made through the database alone (raw SQL, or another process
of a gateway without Redis, such as ``manage.py grant`` beside ``rungateway``) does not move
them: every answer is also kept for at most ``max_age`` seconds, the same bound that the
periodic re-check keeps for open sockets.
"""

import asyncio
import logging
import secrets
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast

from django.db import transaction
from redis import Redis as SyncRedis
from redis.exceptions import RedisError

from gateway.conf import gateway_settings
from gateway.shared import RedisTarget, redis_client, redis_target, uses_redis

logger = logging.getLogger(__name__)

V = TypeVar("V")
# What a stamp reads as: a token that is new at each move (so stamps never repeat, whichever
# Redis or process they come from), a room's seq counter, or None when never moved.
Stamp = int | str | None
STAMP_SECONDS = 86_400  # a stamp not moved for a day is let go (answers live seconds)

ACCESS = "access"  # policies, grants, users and their groups


def retained_stamp(room: str) -> str:
    """The stamp of ``room``'s retained states."""
    return f"retained:{room}"


def _key(name: str) -> str:
    return f"gateway:{gateway_settings().gateway_id}:stamp:{name}"


_local: dict[str, str] = {}
_local_lock = threading.Lock()
_sync_clients: dict[RedisTarget, SyncRedis] = {}


def _token() -> str:
    return secrets.token_hex(8)


def _bump_local(name: str) -> None:
    with _local_lock:
        _local.pop(name, None)
        _local[name] = _token()
        while len(_local) > LOCAL_STAMPS:  # the oldest moves are forgotten first
            del _local[next(iter(_local))]


LOCAL_STAMPS = 100_000


async def read(name: str) -> Stamp:
    """The stamp ``name`` now."""
    (stamp,) = await read_many(name)
    return stamp


async def read_many(*names: str) -> list[Stamp]:
    """The stamps ``names`` now, in one round trip."""
    if not uses_redis():
        return [_local.get(name) for name in names]
    values = await redis_client().mget([_key(name) for name in names])
    return [value.decode() if isinstance(value, bytes) else value for value in values]


async def bump(name: str) -> None:
    """Move the stamp ``name`` (after the change it stands for is committed)."""
    if not uses_redis():
        _bump_local(name)
        return
    await redis_client().set(_key(name), _token(), ex=STAMP_SECONDS)


def bump_on_commit(name: str) -> None:
    """Move the stamp ``name`` once the current transaction commits (at once outside one).

    For synchronous code such as signal handlers. A Redis that cannot be reached is logged,
    not raised: the change is committed already, and the answers cached before it expire
    within their ``max_age``.
    """
    transaction.on_commit(lambda: _bump_sync(name))


def _bump_sync(name: str) -> None:
    target = redis_target()
    if target is None:
        _bump_local(name)
        return
    client = _sync_clients.get(target)
    if client is None:
        client = _sync_clients[target] = target.connect_sync()
    try:
        client.set(_key(name), _token(), ex=STAMP_SECONDS)
    except RedisError:
        logger.exception("could not move stamp %s; cached answers expire on their own", name)


@dataclass(slots=True)
class _Kept(Generic[V]):
    stamp: Stamp
    at: float
    value: V
    cost: int


class Stamped(Generic[V]):
    """Answers of this process, each held while its stamp is unchanged and for at most
    ``max_age`` seconds; at most ``max_entries`` of them and ``max_cost`` in all, the least
    recently used going first."""

    def __init__(self, *, max_entries: int, max_age: float, max_cost: int | None = None) -> None:
        self.max_entries = max_entries
        self.max_age = max_age
        self.max_cost = max_cost
        self._kept: OrderedDict[object, _Kept[V]] = OrderedDict()
        self._cost = 0
        self._loading: dict[tuple[int, object, Stamp], asyncio.Task[V]] = {}
        _caches.add(self)

    async def answer(
        self, key: object, stamp: Stamp, load: Callable[[], Awaitable[tuple[V, int]]]
    ) -> V:
        """The answer for ``key`` at ``stamp``: kept, or loaded (with its cost) and kept.
        Callers that miss together share one load: ten sockets into a room ask once."""
        hit, value = self.get(key, stamp)
        if hit:
            return cast(V, value)
        flight = (id(asyncio.get_running_loop()), key, stamp)
        task = self._loading.get(flight)
        if task is None:
            task = self._loading[flight] = asyncio.ensure_future(self._load(key, stamp, load))
            task.add_done_callback(lambda _: self._loading.pop(flight, None))
        # Shielded: a caller that gives up does not take the others' answer with it.
        return await asyncio.shield(task)

    async def _load(
        self, key: object, stamp: Stamp, load: Callable[[], Awaitable[tuple[V, int]]]
    ) -> V:
        value, cost = await load()
        self.put(key, stamp, value, cost)
        return value

    def get(self, key: object, stamp: Stamp) -> tuple[bool, V | None]:
        """``(True, answer)`` if an answer for ``key`` holds at ``stamp``, else
        ``(False, None)``."""
        kept = self._kept.get(key)
        if kept is None:
            return False, None
        if kept.stamp != stamp or time.monotonic() - kept.at > self.max_age:
            self._drop(key)
            return False, None
        self._kept.move_to_end(key)
        return True, kept.value

    def put(self, key: object, stamp: Stamp, value: V, cost: int = 1) -> None:
        """Keep ``value`` for ``key``, as read after ``stamp`` was; too costly, it is not kept."""
        self._drop(key)
        if self.max_cost is not None and cost > self.max_cost // 4:
            return
        self._kept[key] = _Kept(stamp, time.monotonic(), value, cost)
        self._cost += cost
        while len(self._kept) > self.max_entries or (
            self.max_cost is not None and self._cost > self.max_cost
        ):
            self._drop(next(iter(self._kept)))

    def clear(self) -> None:
        self._kept.clear()
        self._cost = 0

    def _drop(self, key: object) -> None:
        kept = self._kept.pop(key, None)
        if kept is not None:
            self._cost -= kept.cost


_caches: "weakref.WeakSet[Stamped[Any]]" = weakref.WeakSet()


def forget_all() -> None:
    """Drop every answer this process keeps (its database was emptied, as between tests)."""
    for cache in list(_caches):
        cache.clear()
