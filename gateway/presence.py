"""Presence: who is in a room right now, browsers and devices, across every gateway process.

Each browser connection is a member of its room while its socket is open. Members live in
Redis when the processes share one, each with an expiry that the process holding
the socket pushes forward every third of `ttl`; a process that crashes stops doing so, and its
members expire. Every process sweeps expired members and tells their rooms they left (Redis
decides which process removed a member, so a leave is announced once).

Devices are members while their status topic says ``online`` (a rule with ``"presence": true``,
usually with the broker's last will saying ``offline`` when a device vanishes). A device member
says whether it is ``verified``: whether its name was a registered, active device's when it came
online (the bridge looks it up then). Browser members have no such field.

Every join and leave takes the room's next presence version, atomically with the change, and
says how many members the room has after it; the hubs send the count of the newest change they
have seen, so every process converges on the same count whatever order events arrive in. A
snapshot (a welcome's) reads the members, the count and the version together; in a room of
more members than asked for it holds the count alone. Pages list a room's members on request.
"""

import asyncio
import logging
import time
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar

from django.conf import settings

from gateway import metrics
from gateway.conf import gateway_settings
from gateway.envelope import utc_timestamp
from gateway.jsonutil import dumps, parse_json
from gateway.shared import (
    EPOCH_SKIP,
    Sharded,
    epoch_keys,
    per_loop,
    shard_clients,
    shard_names,
    uses_redis,
)
from gateway.transport import ROOM_PRESENCE, PresenceEvent, PresenceMember, Transport, transport

logger = logging.getLogger(__name__)
T = TypeVar("T")

Kind = Literal["browser", "device"]
DEVICE_TTL_SECONDS = 7 * 24 * 3600  # devices leave by their status topic, not by expiry
MAX_MEMBERS = 10_000  # members listed per room at most (``GATEWAY_PRESENCE_MAX_PER_ROOM``)
SHARD_SECONDS = 5.0  # how long a shard may take to refresh or sweep its rooms' presence


@dataclass(frozen=True, slots=True)
class Member:
    """One presence in a room: ``key`` is unique in the room (a connection, a device).

    ``verified`` is for devices only (None for browsers): whether ``name`` was a registered,
    active device when the device joined.
    """

    key: str
    kind: Kind
    name: str
    since: str
    verified: bool | None = None

    def as_dict(self) -> PresenceMember:
        """The member as clients see it (and as it is stored): ``verified`` only when set."""
        data: PresenceMember = {
            "key": self.key,
            "kind": self.kind,
            "name": self.name,
            "since": self.since,
        }
        if self.verified is not None:
            data["verified"] = self.verified
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Member":
        """A stored member; records written before ``verified`` existed, or with fields added
        since, decode too."""
        verified = data.get("verified")
        return cls(
            key=data["key"],
            kind=data["kind"],
            name=data["name"],
            since=data["since"],
            verified=verified if isinstance(verified, bool) else None,
        )


@dataclass(frozen=True, slots=True)
class Change:
    """What a join or a leave did: the room's presence version after it, and its count."""

    version: int
    count: int


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A room's presence at one version: every member, unless there are more than asked for."""

    members: list[Member] | None  # None: more than the limit asked
    count: int
    version: int


class Store(Protocol):
    """Where members are kept. Every join and leave takes the room's next version."""

    async def add(
        self, room: str, member: Member, expires: float, limit: int
    ) -> "tuple[Added, Change | None]": ...

    async def remove(self, room: str, key: str) -> tuple[Member, Change] | None: ...

    async def touch(self, room: str, keys: list[str], expires: float) -> None: ...

    async def touch_all(self, keys_by_room: dict[str, list[str]], expires: float) -> None:
        """`touch` each room's keys (one round trip per Redis)."""

    async def members(self, room: str, now: float) -> list[Member]: ...

    async def snapshot(self, room: str, limit: int) -> Snapshot: ...

    async def page(
        self, room: str, cursor: str, limit: int, now: float
    ) -> tuple[list[Member], str | None, int]: ...

    async def expired(self, now: float) -> list[tuple[str, Member, Change]]: ...


Added = Literal["added", "renewed", "full"]
_ADDED: dict[int, Added] = {1: "added", 0: "renewed", -1: "full"}

# The room's next version, from its version key and the gateway's epoch key (`gateway.shared`):
# a room's first change in a new epoch skips EPOCH_SKIP, past versions the old master may have
# given out unreplicated (processes ignore a change older than the newest they saw).
_NEXT_VERSION = """
local function next_version(key, epoch_key)
  local epoch = tonumber(redis.call('GET', epoch_key) or '0')
  if epoch > 0 then
    local mark = key .. ':epoch'
    if tonumber(redis.call('GET', mark) or '0') < epoch then
      redis.call('INCRBY', key, EPOCH_SKIP)
      redis.call('SET', mark, epoch)
    end
  end
  return redis.call('INCR', key)
end
""".replace("EPOCH_SKIP", str(EPOCH_SKIP))

# Adds (or renews) a member unless the room holds its limit of members. KEYS: the room's members
# hash, its expiry set, the set of rooms with members, its version, the epoch; ARGV: key,
# member, expiry, limit, room. Returns {1 added | 0 renewed | -1 full, version, count}.
_ADD = (
    _NEXT_VERSION
    + """
local count = redis.call('HLEN', KEYS[1])
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 and count >= tonumber(ARGV[4]) then
  return {-1, 0, count}
end
local added = redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[5])
local version = 0
if added == 1 then version = next_version(KEYS[4], KEYS[5]) end
return {added, version, count + added}
"""
)

# Removes a member. KEYS: members hash, expiry set, version, the epoch; ARGV: key.
# Returns {member JSON, version, count}, or false when another process removed it first.
_REMOVE = (
    _NEXT_VERSION
    + """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
if not raw then return false end
redis.call('HDEL', KEYS[1], ARGV[1])
return {raw, next_version(KEYS[3], KEYS[4]), redis.call('HLEN', KEYS[1])}
"""
)

# A room's presence at one version. KEYS: members hash, version; ARGV: limit.
# Returns {count, version, member JSON...} (no members when there are more than the limit).
_SNAPSHOT = """
local count = redis.call('HLEN', KEYS[1])
local version = tonumber(redis.call('GET', KEYS[2]) or '0')
if count > tonumber(ARGV[1]) then return {count, version} end
local found = redis.call('HVALS', KEYS[1])
table.insert(found, 1, version)
table.insert(found, 1, count)
return found
"""

# Takes a room out of the set of rooms with members once its expiry set is empty.
_FORGET_EMPTY = """
if redis.call('ZCARD', KEYS[1]) == 0 then redis.call('SREM', KEYS[2], ARGV[1]) end
return 0
"""


class RedisStore:
    """Members in Redis: a hash of members, a sorted set of expiries and a version per room."""

    def __init__(self, client: Any, *, prefix: str, epoch_key: str | None = None) -> None:
        self.client = client
        self.prefix = prefix
        # The gateway's epoch (`gateway.shared.epoch_keys`); unset, versions never skip.
        self.epoch_key = epoch_key or f"{prefix}no-epoch"

    def _keys(self, room: str) -> tuple[str, str]:
        return f"{self.prefix}members:{room}", f"{self.prefix}expiry:{room}"

    def _version(self, room: str) -> str:
        return f"{self.prefix}version:{room}"

    async def add(
        self, room: str, member: Member, expires: float, limit: int
    ) -> tuple[Added, Change | None]:
        members, expiry = self._keys(room)
        found, version, count = await self.client.eval(
            _ADD,
            5,
            members,
            expiry,
            f"{self.prefix}rooms",
            self._version(room),
            self.epoch_key,
            member.key,
            dumps(member.as_dict()),
            repr(expires),
            limit,
            room,
        )
        added = _ADDED[int(found)]
        return added, Change(int(version), int(count)) if added == "added" else None

    async def remove(self, room: str, key: str) -> tuple[Member, Change] | None:
        members, expiry = self._keys(room)
        found = await self.client.eval(
            _REMOVE, 4, members, expiry, self._version(room), self.epoch_key, key
        )
        if not found:
            return None  # another process removed it first
        raw, version, count = found
        return Member.from_dict(parse_json(raw)), Change(int(version), int(count))

    async def touch(self, room: str, keys: list[str], expires: float) -> None:
        if keys:
            _, expiry = self._keys(room)
            await self.client.zadd(expiry, dict.fromkeys(keys, expires), xx=True)

    async def touch_all(self, keys_by_room: dict[str, list[str]], expires: float) -> None:
        async with self.client.pipeline(transaction=False) as pipe:
            for room, keys in keys_by_room.items():
                if keys:
                    pipe.zadd(self._keys(room)[1], dict.fromkeys(keys, expires), xx=True)
            await pipe.execute()

    async def members(self, room: str, now: float) -> list[Member]:
        members, expiry = self._keys(room)
        live = await self.client.zrangebyscore(expiry, now, "+inf")
        if not live:
            return []
        raws = await self.client.hmget(members, live)
        return [Member.from_dict(parse_json(raw)) for raw in raws if raw is not None]

    async def snapshot(self, room: str, limit: int) -> Snapshot:
        members, _ = self._keys(room)
        count, version, *raws = await self.client.eval(
            _SNAPSHOT, 2, members, self._version(room), limit
        )
        listed = None
        if int(count) <= limit:
            listed = [Member.from_dict(parse_json(raw)) for raw in raws]
        return Snapshot(listed, int(count), int(version))

    async def page(
        self, room: str, cursor: str, limit: int, now: float
    ) -> tuple[list[Member], str | None, int]:
        members, expiry = self._keys(room)
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.hscan(members, int(cursor), count=limit)
            pipe.hlen(members)
            (following, found), count = await pipe.execute()
        keys = list(found)
        live: list[Member] = []
        if keys:
            expiries = await self.client.zmscore(expiry, keys)
            for key, expires in zip(keys, expiries, strict=True):
                if expires is not None and float(expires) >= now:
                    live.append(Member.from_dict(parse_json(found[key])))
        return live, None if int(following) == 0 else str(following), int(count)

    async def expired(self, now: float) -> list[tuple[str, Member, Change]]:
        gone: list[tuple[str, Member, Change]] = []
        for raw_room in await self.client.smembers(f"{self.prefix}rooms"):
            room = raw_room.decode() if isinstance(raw_room, bytes) else str(raw_room)
            _, expiry = self._keys(room)
            for key in await self.client.zrangebyscore(expiry, "-inf", f"({now}"):
                name = key.decode() if isinstance(key, bytes) else str(key)
                removed = await self.remove(room, name)
                if removed is not None:
                    gone.append((room, *removed))
            # A room nobody is in leaves the set (a join puts it back).
            await self.client.eval(_FORGET_EMPTY, 2, expiry, f"{self.prefix}rooms", room)
        return gone


class ShardedStore(Sharded[RedisStore]):
    """Members in several Redis servers, each room's in its shard's."""

    async def add(
        self, room: str, member: Member, expires: float, limit: int
    ) -> tuple[Added, Change | None]:
        return await self.for_room(room).add(room, member, expires, limit)

    async def remove(self, room: str, key: str) -> tuple[Member, Change] | None:
        return await self.for_room(room).remove(room, key)

    async def touch(self, room: str, keys: list[str], expires: float) -> None:
        await self.for_room(room).touch(room, keys, expires)

    async def touch_all(self, keys_by_room: dict[str, list[str]], expires: float) -> None:
        """Each shard's rooms side by side, each shard given `SHARD_SECONDS` at most: one
        that is down or hung must not let the others' members lapse."""
        by_shard = self.split(keys_by_room, str)
        await self._each(
            {
                shard: self.shards[shard].touch_all({r: keys_by_room[r] for r in rooms}, expires)
                for shard, rooms in by_shard.items()
            },
            "refreshed",
        )

    async def _each(self, calls: Mapping[int, Awaitable[T]], doing: str) -> list[T]:
        """The results of the shards' ``calls`` that succeeded within `SHARD_SECONDS`; the
        others are logged (and asked again next time)."""
        found = await asyncio.gather(
            *(asyncio.wait_for(call, SHARD_SECONDS) for call in calls.values()),
            return_exceptions=True,
        )
        results: list[T] = []
        for shard, result in zip(calls, found, strict=True):
            if isinstance(result, Exception):
                name = self.names[shard]
                logger.warning("shard %s's presence cannot be %s yet: %r", name, doing, result)
            elif isinstance(result, BaseException):
                raise result
            else:
                results.append(result)
        return results

    async def members(self, room: str, now: float) -> list[Member]:
        return await self.for_room(room).members(room, now)

    async def snapshot(self, room: str, limit: int) -> Snapshot:
        return await self.for_room(room).snapshot(room, limit)

    async def page(
        self, room: str, cursor: str, limit: int, now: float
    ) -> tuple[list[Member], str | None, int]:
        return await self.for_room(room).page(room, cursor, limit, now)

    async def expired(self, now: float) -> list[tuple[str, Member, Change]]:
        """Each shard's; one that is down is logged and asked again next time."""
        calls = {i: shard.expired(now) for i, shard in enumerate(self.shards)}
        return [gone for found in await self._each(calls, "swept") for gone in found]


class LocalStore:
    """Members in this process, for a gateway that runs as one process."""

    def __init__(self) -> None:
        self._rooms: dict[str, dict[str, tuple[Member, float]]] = {}
        self._versions: dict[str, int] = {}

    def _change(self, room: str) -> Change:
        version = self._versions[room] = self._versions.get(room, 0) + 1
        return Change(version, len(self._rooms.get(room, {})))

    async def add(
        self, room: str, member: Member, expires: float, limit: int
    ) -> tuple[Added, Change | None]:
        members = self._rooms.setdefault(room, {})
        if member.key in members:
            members[member.key] = (member, expires)
            return "renewed", None
        if len(members) >= limit:
            return "full", None
        members[member.key] = (member, expires)
        return "added", self._change(room)

    async def remove(self, room: str, key: str) -> tuple[Member, Change] | None:
        members = self._rooms.get(room, {})
        entry = members.pop(key, None)
        if entry is None:
            return None
        change = self._change(room)
        if not members:
            self._rooms.pop(room, None)
        return entry[0], change

    async def touch(self, room: str, keys: list[str], expires: float) -> None:
        members = self._rooms.get(room, {})
        for key in keys:
            if key in members:
                members[key] = (members[key][0], expires)

    async def touch_all(self, keys_by_room: dict[str, list[str]], expires: float) -> None:
        for room, keys in keys_by_room.items():
            await self.touch(room, keys, expires)

    async def members(self, room: str, now: float) -> list[Member]:
        return [m for m, expires in self._rooms.get(room, {}).values() if expires >= now]

    async def snapshot(self, room: str, limit: int) -> Snapshot:
        members = self._rooms.get(room, {})
        listed = [m for m, _ in members.values()] if len(members) <= limit else None
        return Snapshot(listed, len(members), self._versions.get(room, 0))

    async def page(
        self, room: str, cursor: str, limit: int, now: float
    ) -> tuple[list[Member], str | None, int]:
        start = int(cursor)
        members = self._rooms.get(room, {})
        live = sorted((m for m, expires in members.values() if expires >= now), key=lambda m: m.key)
        following = start + limit
        more = str(following) if following < len(live) else None
        return live[start:following], more, len(members)

    async def expired(self, now: float) -> list[tuple[str, Member, Change]]:
        gone = [
            (room, member)
            for room, members in self._rooms.items()
            for member, expires in members.values()
            if expires < now
        ]
        found = []
        for room, member in gone:
            removed = await self.remove(room, member.key)
            if removed is not None:
                found.append((room, *removed))
        return found


class Presence:
    """Joins, leaves, refreshes and sweeps; tells rooms of every change."""

    def __init__(
        self, store: Store, rooms: Transport, *, ttl: float, max_members: int = MAX_MEMBERS
    ) -> None:
        self.store = store
        self.rooms = rooms
        self.max_members = max_members
        self.ttl = ttl
        self._local: dict[str, set[str]] = {}  # room -> keys of members held by this process
        self._keeper: asyncio.Task[None] | None = None

    async def join(
        self,
        room: str,
        key: str,
        kind: Kind,
        name: str,
        *,
        hold: bool,
        verified: bool | None = None,
    ) -> None:
        """``key`` is in ``room``; with ``hold``, this process keeps it alive until `leave`.

        ``verified``: for a device, whether ``name`` is a registered, active device.
        """
        ttl = self.ttl if hold else DEVICE_TTL_SECONDS
        member = Member(key=key, kind=kind, name=name, since=utc_timestamp(), verified=verified)
        added, change = await self.store.add(room, member, time.time() + ttl, self.max_members)
        if added == "full":
            metrics.inc("presence_refused", kind)
            return
        if change is not None:
            await self._announce(room, "join", member, change)
        if hold:
            self._local.setdefault(room, set()).add(key)
            if self._keeper is None or self._keeper.done():
                self._keeper = asyncio.get_running_loop().create_task(self._keep(), name="presence")

    async def leave(self, room: str, key: str) -> None:
        """``key`` left ``room``."""
        self._local.get(room, set()).discard(key)
        removed = await self.store.remove(room, key)
        if removed is not None:
            await self._announce(room, "leave", *removed)

    async def members(self, room: str) -> list[PresenceMember]:
        """Who is in ``room`` now."""
        return [m.as_dict() for m in await self.store.members(room, time.time())]

    async def snapshot(self, room: str, limit: int) -> tuple[list[PresenceMember] | None, int, int]:
        """Every member of ``room`` (None when there are more than ``limit``), the count and
        the version they are at, read together."""
        found = await self.store.snapshot(room, limit)
        listed = None if found.members is None else [m.as_dict() for m in found.members]
        return listed, found.count, found.version

    async def page(
        self, room: str, cursor: str, limit: int
    ) -> tuple[list[PresenceMember], str | None, int]:
        """About ``limit`` members of ``room`` from ``cursor`` ("0" to begin), the cursor of
        the next page (None at the end) and the room's count. A member present throughout is
        listed at least once; one who comes or goes meanwhile may or may not be."""
        members, following, count = await self.store.page(room, cursor, limit, time.time())
        return [m.as_dict() for m in members], following, count

    async def _announce(
        self, room: str, event: Literal["join", "leave"], member: Member, change: Change
    ) -> None:
        metrics.inc("presence_events", event)
        payload = PresenceEvent(
            type=ROOM_PRESENCE,
            room=room,
            event=event,
            member=member.as_dict(),
            version=change.version,
            count=change.count,
        )
        await self.rooms.send(room, [payload])

    async def _keep(self) -> None:
        while True:
            await asyncio.sleep(self.ttl / 3)
            try:
                held = {room: list(keys) for room, keys in self._local.items()}
                await self.store.touch_all(held, time.time() + self.ttl)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - logged; touched again next time
                logger.warning("could not refresh presence: %s", exc)
            try:
                for room, member, change in await self.store.expired(time.time()):
                    await self._announce(room, "leave", member, change)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("refreshing presence failed; trying again")


_presences: dict[tuple[Any, Any, int], Presence] = {}


def presence_for() -> Presence:
    """This event loop's presence (its members in Redis when the processes share one)."""
    return per_loop(_presences, _make_presence)


def _make_presence() -> Presence:
    conf = gateway_settings()
    store: Store
    if uses_redis():
        stores = [
            RedisStore(
                client,
                prefix=f"gateway:{conf.gateway_id}:presence:",
                epoch_key=epoch_keys(f"gateway:{conf.gateway_id}:")[1],
            )
            for client in shard_clients()
        ]
        store = stores[0] if len(stores) == 1 else ShardedStore(stores, shard_names())
    else:
        store = LocalStore()
    return Presence(
        store,
        transport(),
        ttl=conf.presence_ttl,
        max_members=int(getattr(settings, "GATEWAY_PRESENCE_MAX_PER_ROOM", MAX_MEMBERS)),
    )
