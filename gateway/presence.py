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
"""

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from django.conf import settings

from gateway import metrics
from gateway.conf import gateway_settings
from gateway.envelope import utc_timestamp
from gateway.jsonutil import dumps, parse_json
from gateway.shared import per_loop, redis_client, uses_redis
from gateway.transport import ROOM_PRESENCE, PresenceEvent, PresenceMember, Transport, transport

logger = logging.getLogger(__name__)

Kind = Literal["browser", "device"]
DEVICE_TTL_SECONDS = 7 * 24 * 3600  # devices leave by their status topic, not by expiry
MAX_MEMBERS = 10_000  # members listed per room at most (``GATEWAY_PRESENCE_MAX_PER_ROOM``)


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


class Store(Protocol):
    """Where members are kept."""

    async def add(self, room: str, member: Member, expires: float, limit: int) -> "Added": ...

    async def remove(self, room: str, key: str) -> Member | None: ...

    async def touch(self, room: str, keys: list[str], expires: float) -> None: ...

    async def members(self, room: str, now: float) -> list[Member]: ...

    async def expired(self, now: float) -> list[tuple[str, Member]]: ...


Added = Literal["added", "renewed", "full"]
_ADDED: dict[int, Added] = {1: "added", 0: "renewed", -1: "full"}

# Adds (or renews) a member unless the room holds its limit of members. KEYS: the room's members
# hash, its expiry set, the set of rooms with members; ARGV: key, member, expiry, limit, room.
_ADD = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0
    and redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[4]) then
  return -1
end
local added = redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[5])
return added
"""

# Takes a room out of the set of rooms with members once its expiry set is empty.
_FORGET_EMPTY = """
if redis.call('ZCARD', KEYS[1]) == 0 then redis.call('SREM', KEYS[2], ARGV[1]) end
return 0
"""


class RedisStore:
    """Members in Redis: a hash of members and a sorted set of expiries per room."""

    def __init__(self, client: Any, *, prefix: str) -> None:
        self.client = client
        self.prefix = prefix

    def _keys(self, room: str) -> tuple[str, str]:
        return f"{self.prefix}members:{room}", f"{self.prefix}expiry:{room}"

    async def add(self, room: str, member: Member, expires: float, limit: int) -> Added:
        members, expiry = self._keys(room)
        found = await self.client.eval(
            _ADD,
            3,
            members,
            expiry,
            f"{self.prefix}rooms",
            member.key,
            dumps(member.as_dict()),
            repr(expires),
            limit,
            room,
        )
        return _ADDED[int(found)]

    async def remove(self, room: str, key: str) -> Member | None:
        members, expiry = self._keys(room)
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.hget(members, key)
            pipe.hdel(members, key)
            pipe.zrem(expiry, key)
            raw, removed, _ = await pipe.execute()
        if not removed or raw is None:
            return None  # another process removed it first
        return Member.from_dict(parse_json(raw))

    async def touch(self, room: str, keys: list[str], expires: float) -> None:
        if keys:
            _, expiry = self._keys(room)
            await self.client.zadd(expiry, dict.fromkeys(keys, expires), xx=True)

    async def members(self, room: str, now: float) -> list[Member]:
        members, expiry = self._keys(room)
        live = await self.client.zrangebyscore(expiry, now, "+inf")
        if not live:
            return []
        raws = await self.client.hmget(members, live)
        return [Member.from_dict(parse_json(raw)) for raw in raws if raw is not None]

    async def expired(self, now: float) -> list[tuple[str, Member]]:
        gone: list[tuple[str, Member]] = []
        for raw_room in await self.client.smembers(f"{self.prefix}rooms"):
            room = raw_room.decode() if isinstance(raw_room, bytes) else str(raw_room)
            _, expiry = self._keys(room)
            for key in await self.client.zrangebyscore(expiry, "-inf", f"({now}"):
                name = key.decode() if isinstance(key, bytes) else str(key)
                member = await self.remove(room, name)
                if member is not None:
                    gone.append((room, member))
            # A room nobody is in leaves the set (a join puts it back).
            await self.client.eval(_FORGET_EMPTY, 2, expiry, f"{self.prefix}rooms", room)
        return gone


class LocalStore:
    """Members in this process, for a gateway that runs as one process."""

    def __init__(self) -> None:
        self._rooms: dict[str, dict[str, tuple[Member, float]]] = {}

    async def add(self, room: str, member: Member, expires: float, limit: int) -> Added:
        members = self._rooms.setdefault(room, {})
        if member.key in members:
            members[member.key] = (member, expires)
            return "renewed"
        if len(members) >= limit:
            return "full"
        members[member.key] = (member, expires)
        return "added"

    async def remove(self, room: str, key: str) -> Member | None:
        entry = self._rooms.get(room, {}).pop(key, None)
        return entry[0] if entry else None

    async def touch(self, room: str, keys: list[str], expires: float) -> None:
        members = self._rooms.get(room, {})
        for key in keys:
            if key in members:
                members[key] = (members[key][0], expires)

    async def members(self, room: str, now: float) -> list[Member]:
        return [m for m, expires in self._rooms.get(room, {}).values() if expires >= now]

    async def expired(self, now: float) -> list[tuple[str, Member]]:
        gone = [
            (room, member)
            for room, members in self._rooms.items()
            for member, expires in members.values()
            if expires < now
        ]
        for room, member in gone:
            await self.remove(room, member.key)
        return gone


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
        added = await self.store.add(room, member, time.time() + ttl, self.max_members)
        if added == "full":
            metrics.inc("presence_refused", kind)
            return
        if added == "added":
            await self._announce(room, "join", member)
        if hold:
            self._local.setdefault(room, set()).add(key)
            if self._keeper is None or self._keeper.done():
                self._keeper = asyncio.get_running_loop().create_task(self._keep(), name="presence")

    async def leave(self, room: str, key: str) -> None:
        """``key`` left ``room``."""
        self._local.get(room, set()).discard(key)
        member = await self.store.remove(room, key)
        if member is not None:
            await self._announce(room, "leave", member)

    async def members(self, room: str) -> list[PresenceMember]:
        """Who is in ``room`` now."""
        return [m.as_dict() for m in await self.store.members(room, time.time())]

    async def _announce(self, room: str, event: Literal["join", "leave"], member: Member) -> None:
        metrics.inc("presence_events", event)
        payload = PresenceEvent(type=ROOM_PRESENCE, room=room, event=event, member=member.as_dict())
        await self.rooms.send(room, [payload])

    async def _keep(self) -> None:
        while True:
            await asyncio.sleep(self.ttl / 3)
            try:
                expires = time.time() + self.ttl
                for room, keys in list(self._local.items()):
                    await self.store.touch(room, list(keys), expires)
                for room, member in await self.store.expired(time.time()):
                    await self._announce(room, "leave", member)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("refreshing presence failed; trying again")


_presences: dict[tuple[str | None, int], Presence] = {}


def presence_for() -> Presence:
    """This event loop's presence (its members in Redis when the processes share one)."""
    return per_loop(_presences, _make_presence)


def _make_presence() -> Presence:
    conf = gateway_settings()
    store: Store
    if uses_redis():
        store = RedisStore(redis_client(), prefix=f"gateway:{conf.gateway_id}:presence:")
    else:
        store = LocalStore()
    return Presence(
        store,
        transport(),
        ttl=conf.presence_ttl,
        max_members=int(getattr(settings, "GATEWAY_PRESENCE_MAX_PER_ROOM", MAX_MEMBERS)),
    )
