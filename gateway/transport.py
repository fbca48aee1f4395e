"""The gateway's own transport: how room events travel from the publish path to each process's
hub (`protocols.fanout`), in a format and under Redis keys the gateway owns.

Each ASGI process has one hub; the hub is a member of every room it has sockets in. A room event
goes once to each member hub, which writes it to its local sockets. In Redis:

- ``<prefix>hubs:<room>``: a sorted set of the hubs in the room, each scored with the time its
  membership lapses (renewed by the hub while it lives; a crashed process's hubs lapse);
- ``<prefix>inbox:<hub>``: a list of encoded events waiting for the hub, at most ``capacity``
  (an event for a full inbox is dropped and counted as the messages it held), expiring when
  nobody reads it.

Events are MessagePack arrays: ``[FORMAT, kind, ...]``, see `encode` and `decode`; the one
place that knows the layout, with the Lua below that builds message events in Redis itself.
A burst of device messages is appended to history and delivered to every hub of its rooms in
one script (`RedisTransport.append_and_deliver`): one round trip from the broker to the rooms.

Without Redis (``rungateway``), `LocalTransport` hands the same events over in memory.
"""

import asyncio
import logging
import time
import uuid
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any, Literal, NotRequired, Protocol, TypedDict, cast

import msgpack
import orjson
from django.conf import settings
from redis.asyncio import Redis

from gateway import metrics
from gateway.conf import gateway_settings
from gateway.envelope import Envelope
from gateway.history import APPEND_RECORDS_LUA, Once, RedisWindow, ShardedWindow, window_text
from gateway.shared import (
    ReplicaWait,
    Sharded,
    on_each,
    per_loop,
    shard_clients,
    shard_names,
    uses_redis,
)

logger = logging.getLogger(__name__)

FORMAT = 1  # the first element of every encoded event; a reader refuses any other
EVENT_ENVELOPES = 64  # messages per event at most, which bounds an event's size
BLOCK_SECONDS = 5  # how long a hub's read waits for an event before asking again
INBOX_TTL_SECONDS = 60  # an inbox nobody reads for this long goes, with what it held

ROOM_MESSAGES: Literal["room.messages"] = "room.messages"
ROOM_PRESENCE: Literal["room.presence"] = "room.presence"
ROOM_ERROR: Literal["room.error"] = "room.error"

_MESSAGES, _PRESENCE, _ERROR = "m", "p", "e"  # the kinds, as encoded


class MessagesEvent(TypedDict):
    """Messages of one room that entered together, in ``seq`` order, each with its ``seq``."""

    type: Literal["room.messages"]
    envelopes: list[Envelope]


class PresenceMember(TypedDict):
    """A member of a room as clients see it (`gateway.presence.Member.as_dict`)."""

    key: str
    kind: Literal["browser", "device"]
    name: str
    since: str
    verified: NotRequired[bool]


class PresenceEvent(TypedDict):
    """A member joined or left a room: the room's presence ``version`` after the change (each
    change takes the next one) and its ``count`` of members then."""

    type: Literal["room.presence"]
    room: str
    event: Literal["join", "leave"]
    member: PresenceMember
    version: int
    count: int


class ErrorEvent(TypedDict):
    """Something a socket sent could not be delivered; sent to the hub that holds the socket,
    ``to`` naming the socket among its sockets in ``room``."""

    type: Literal["room.error"]
    code: str
    detail: str
    id: str
    room: str
    to: NotRequired[str]


Event = MessagesEvent | PresenceEvent | ErrorEvent


class UnknownEventError(ValueError):
    """Bytes that are not an event this gateway writes (another format, another kind)."""


def room_error(envelope: Envelope, code: str, detail: str, to: str | None) -> ErrorEvent:
    """The event that tells ``to`` (a socket of the hub it is sent to) that ``envelope`` could
    not be delivered."""
    event = ErrorEvent(
        type=ROOM_ERROR, code=code, detail=detail, id=envelope["id"], room=envelope["room"]
    )
    if to:
        event["to"] = to
    return event


def messages_event(envelopes: list[Envelope]) -> MessagesEvent:
    return MessagesEvent(type=ROOM_MESSAGES, envelopes=envelopes)


def encode(event: Event) -> bytes:
    """``event`` as the bytes a hub's inbox holds.

    Messages: ``[FORMAT, "m", [envelope JSON without seq, ...], [seq, ...]]`` (the JSON is what
    the history window keeps, so the script that appends a burst delivers it as it is).
    Presence: ``[FORMAT, "p", room, "join" | "leave", member, version, count]``. Error:
    ``[FORMAT, "e", room,
    to ("" for none), id, code, detail]``.
    """
    value: list[Any]
    if event["type"] == ROOM_MESSAGES:
        envelopes = event["envelopes"]
        value = [
            FORMAT,
            _MESSAGES,
            [window_text(e) for e in envelopes],
            [e["seq"] for e in envelopes],
        ]
    elif event["type"] == ROOM_PRESENCE:
        presence = event
        value = [
            FORMAT,
            _PRESENCE,
            presence["room"],
            presence["event"],
            presence["member"],
            presence["version"],
            presence["count"],
        ]
    elif event["type"] == ROOM_ERROR:
        error = event
        value = [
            FORMAT,
            _ERROR,
            error["room"],
            error.get("to", ""),
            error["id"],
            error["code"],
            error["detail"],
        ]
    else:
        raise UnknownEventError(f"no encoding for an event of type {event['type']!r}")
    packed: bytes = msgpack.packb(value)
    return packed


def decode(raw: bytes) -> Event:
    """The event ``raw`` holds (see `encode`).

    Raises:
        UnknownEventError: ``raw`` is not an event of this format.
    """
    try:
        value = msgpack.unpackb(raw, raw=False)
    except (ValueError, msgpack.UnpackException) as exc:
        raise UnknownEventError(f"not MessagePack: {exc}") from exc
    if not isinstance(value, list) or len(value) < 2 or value[0] != FORMAT:
        raise UnknownEventError("not an event of this gateway's format")
    kind = value[1]
    try:
        if kind == _MESSAGES:
            _, _, texts, seqs = value
            envelopes = []
            for text, seq in zip(texts, seqs, strict=True):
                envelope = cast(Envelope, orjson.loads(text))  # written by `window_text`: no check
                envelope["seq"] = int(seq)
                envelopes.append(envelope)
            return messages_event(envelopes)
        if kind == _PRESENCE:
            _, _, room, change, member, version, count = value
            return PresenceEvent(
                type=ROOM_PRESENCE,
                room=room,
                event=change,
                member=member,
                version=int(version),
                count=int(count),
            )
        if kind == _ERROR:
            _, _, room, to, message_id, code, detail = value
            error = ErrorEvent(type=ROOM_ERROR, code=code, detail=detail, id=message_id, room=room)
            if to:
                error["to"] = to
            return error
    except (ValueError, TypeError) as exc:
        raise UnknownEventError(f"a malformed event of kind {kind!r}: {exc}") from exc
    raise UnknownEventError(f"an event of unknown kind {kind!r}")


def _decode_all(raws: Iterable[bytes]) -> list[Event]:
    events: list[Event] = []
    for raw in raws:
        try:
            events.append(decode(raw))
        except UnknownEventError as exc:
            metrics.dropped("unknown_event", f"a hub read an event it cannot decode: {exc}")
    return events


def _count_full(full: Sequence[Any]) -> None:
    """Count what the scripts report a full inbox did not get: [hub, messages, ...]."""
    for hub, lost in zip(full[::2], full[1::2], strict=True):
        name = hub.decode() if isinstance(hub, bytes) else str(hub)
        metrics.dropped("channel_full", f"{int(lost)} messages for hub {name}, which is full", lost)


# Pushes an event to every hub of a room, or to one hub, unless its inbox is full. Needs `now`,
# `capacity`, `inbox_ttl`, `tprefix` and `full` in scope.
_PUSH = """
local hubs_of = {}
local function push_to(hub, event, weight)
  local inbox = tprefix .. 'inbox:' .. hub
  if redis.call('LLEN', inbox) < capacity then
    redis.call('RPUSH', inbox, event)
    redis.call('EXPIRE', inbox, inbox_ttl)
  else
    full[#full + 1] = hub
    full[#full + 1] = weight
  end
end
local function push(room, event, weight)
  local hubs = hubs_of[room]
  if not hubs then
    hubs = redis.call('ZRANGEBYSCORE', tprefix .. 'hubs:' .. room, now, '+inf')
    hubs_of[room] = hubs
  end
  for _, hub in ipairs(hubs) do push_to(hub, event, weight) end
end
"""

# Delivers events. ARGV: now, capacity, inbox TTL, key prefix, then one MessagePack array of
# [target kind ('r' a room, 'h' a hub), target, event, messages it holds]. Returns what full
# inboxes did not get: {hub, messages, ...}.
_DELIVER = (
    """
local now, capacity, inbox_ttl, tprefix = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
local full = {}
"""
    + _PUSH
    + """
for _, item in ipairs(cmsgpack.unpack(ARGV[5])) do
  if item[1] == 'r' then push(item[2], item[3], item[4]) else push_to(item[2], item[3], item[4]) end
end
return full
"""
)

# Appends a burst to history (ARGV[1..6] and `records`: see `APPEND_RECORDS_LUA`) and delivers
# it, in one step. Nothing is done if a room has no counter yet (returns {0}). ARGV[7..12]:
# now, capacity, inbox TTL, key prefix, messages per event, FORMAT. Each room's new messages go
# to its hubs as message events in order (copies of messages sent before go nowhere). Returns
# {1, per envelope its seq (0: a copy), what full inboxes did not get}.
_APPEND_AND_DELIVER = (
    APPEND_RECORDS_LUA
    + """
if not seqs then return {0} end
local now, capacity, inbox_ttl, tprefix, limit, version =
  ARGV[7], tonumber(ARGV[8]), ARGV[9], ARGV[10], tonumber(ARGV[11]), tonumber(ARGV[12])
local full = {}
"""
    + _PUSH
    + """
local batches, order = {}, {}
local function flush(room)
  local batch = batches[room]
  if #batch.texts > 0 then
    push(room, cmsgpack.pack({version, 'm', batch.texts, batch.seqs}), #batch.texts)
    batches[room] = {texts = {}, seqs = {}}
  end
end
for i, record in ipairs(records) do
  if seqs[i] ~= 0 then
    local room = record[1]
    if not batches[room] then
      batches[room] = {texts = {}, seqs = {}}
      order[#order + 1] = room
    end
    local batch = batches[room]
    batch.texts[#batch.texts + 1] = record[3]
    batch.seqs[#batch.seqs + 1] = seqs[i]
    if #batch.texts >= limit then flush(room) end
  end
end
for _, room in ipairs(order) do flush(room) end
return {1, seqs, full}
"""
)


class Transport(Protocol):
    """Carries room events to the hubs of the processes with sockets in the room.

    A hub has one inbox per *lane*: each shard of a sharded Redis is one (`ShardedTransport`),
    and a hub reads each lane on its own, so a shard that is down stops only its rooms."""

    @property
    def lanes(self) -> int:
        """How many inboxes each hub reads."""

    def lane_of(self, room: str) -> int:
        """The lane ``room``'s events come on."""

    async def open_hub(self) -> str:
        """A new hub's id (its inbox, and its address for `send_to`)."""

    async def join(self, hub: str, room: str) -> None:
        """``hub`` gets ``room``'s events from now on."""

    async def leave(self, hub: str, room: str) -> None: ...

    async def renew(self, hub: str, rooms: Iterable[str]) -> None:
        """Keep ``hub``'s memberships from lapsing (a hub that stops renewing has crashed)."""

    async def receive(self, hub: str, limit: int, lane: int = 0) -> list[Event]:
        """Up to ``limit`` events waiting for ``hub`` on ``lane``, oldest first; when none
        waits, the first to arrive within `BLOCK_SECONDS` (else none)."""

    async def send(self, room: str, events: Sequence[Event]) -> None:
        """Deliver ``events`` to every hub in ``room``, in order."""

    async def send_rooms(
        self, by_room: dict[str, list[Envelope]], *, replicated: bool = False
    ) -> None:
        """Deliver numbered messages to their rooms' hubs, each room's in order; with
        ``replicated``, return once a replica has what was written so far (`ReplicaWait`)."""

    async def send_to(self, hub: str, event: Event) -> None:
        """Deliver ``event`` to one hub."""


def _room_of(event: Event) -> str:
    if event["type"] == ROOM_MESSAGES:
        return event["envelopes"][0]["room"]
    return event["room"]


def _chunks(envelopes: list[Envelope]) -> list[MessagesEvent]:
    return [
        messages_event(envelopes[start : start + EVENT_ENVELOPES])
        for start in range(0, len(envelopes), EVENT_ENVELOPES)
    ]


def _weight(event: Event) -> int:
    """The messages an event holds: what its loss counts as (presence and errors: one)."""
    if event["type"] == ROOM_MESSAGES:
        return len(event["envelopes"])
    return 1


class RedisTransport:
    """Events through Redis, for gateways of several processes."""

    lanes = 1

    def __init__(
        self,
        client: Redis,
        *,
        prefix: str,
        capacity: int,
        membership_seconds: int,
        replica_wait: ReplicaWait | None = None,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.capacity = capacity
        self.membership_seconds = membership_seconds
        self.replica_wait = replica_wait or ReplicaWait(0)

    def lane_of(self, room: str) -> int:
        return 0

    def _hubs_key(self, room: str) -> str:
        return f"{self.prefix}hubs:{room}"

    def _inbox_key(self, hub: str) -> str:
        return f"{self.prefix}inbox:{hub}"

    async def open_hub(self) -> str:
        return uuid.uuid4().hex

    async def join(self, hub: str, room: str) -> None:
        await self.renew(hub, [room])

    async def leave(self, hub: str, room: str) -> None:
        await self.client.zrem(self._hubs_key(room), hub)

    async def renew(self, hub: str, rooms: Iterable[str]) -> None:
        now = _now()
        lapses = now + self.membership_seconds
        async with self.client.pipeline(transaction=False) as pipe:
            for room in rooms:
                key = self._hubs_key(room)
                pipe.zremrangebyscore(key, "-inf", f"({now}")  # crashed processes' hubs
                pipe.zadd(key, {hub: lapses})
                pipe.expire(key, self.membership_seconds)
            await pipe.execute()

    async def receive(self, hub: str, limit: int, lane: int = 0) -> list[Event]:
        key = self._inbox_key(hub)
        raws = await self.client.lpop(key, limit)
        if not raws:
            popped = await self.client.blpop([key], timeout=BLOCK_SECONDS)
            if popped is None:
                return []
            raws = [popped[1]]
        return _decode_all(cast(list[bytes], raws))

    async def _deliver(
        self, items: list[tuple[str, str, bytes, int]], *, replicated: bool = False
    ) -> None:
        if not items:
            return
        command = (
            "EVAL",
            _DELIVER,
            0,
            repr(_now()),
            self.capacity,
            INBOX_TTL_SECONDS,
            self.prefix,
            msgpack.packb(items, use_bin_type=False),  # raw strings: what Redis's Lua reads
        )
        if replicated:  # what came before it, too: a replica's copy follows the master's order
            full = await self.replica_wait.run(self.client, command)
        else:
            full = await self.client.execute_command(*command)  # type: ignore[no-untyped-call]
        _count_full(full)

    async def send(self, room: str, events: Sequence[Event]) -> None:
        await self._deliver([("r", room, encode(event), _weight(event)) for event in events])

    async def send_rooms(
        self, by_room: dict[str, list[Envelope]], *, replicated: bool = False
    ) -> None:
        await self._deliver(
            [
                ("r", room, encode(event), _weight(event))
                for room, envelopes in by_room.items()
                for event in _chunks(envelopes)
            ],
            replicated=replicated,
        )

    async def send_to(self, hub: str, event: Event) -> None:
        await self._deliver([("h", hub, encode(event), _weight(event))])

    async def append_and_deliver(
        self, window: RedisWindow, envelopes: Sequence[Envelope], once: Once
    ) -> list[int] | None:
        """Append ``envelopes`` to ``window`` and deliver them to their rooms' hubs in one
        step: each envelope's seq (`gateway.history.COPY` for a copy of one sent before), or
        None, having done nothing, if a room has no counter yet. Once keys are marked sent.

        With once keys (messages the broker waits to have acknowledged), the reply waits for
        a replica to have the append too, where the master has one (`ReplicaWait`)."""
        command = (
            "EVAL",
            _APPEND_AND_DELIVER,
            0,
            *window.script_args(envelopes, once),
            repr(_now()),
            self.capacity,
            INBOX_TTL_SECONDS,
            self.prefix,
            EVENT_ENVELOPES,
            FORMAT,
        )
        if once:
            found = await self.replica_wait.run(window.client, command)
        else:
            found = await window.client.execute_command(*command)
        if not found[0]:
            return None
        _count_full(found[2])
        return [int(seq) for seq in found[1]]


class ShardedTransport(Sharded[RedisTransport]):
    """Events through several Redis servers, each room's through its shard's: a hub has an
    inbox in each, read as one lane."""

    @property
    def lanes(self) -> int:
        return len(self.shards)

    def lane_of(self, room: str) -> int:
        return self.index(room)

    async def open_hub(self) -> str:
        return uuid.uuid4().hex

    async def join(self, hub: str, room: str) -> None:
        await self.for_room(room).join(hub, room)

    async def leave(self, hub: str, room: str) -> None:
        await self.for_room(room).leave(hub, room)

    async def renew(self, hub: str, rooms: Iterable[str]) -> None:
        by_shard = self.split(rooms, str)
        await on_each([self.shards[i].renew(hub, some) for i, some in by_shard.items()])

    async def receive(self, hub: str, limit: int, lane: int = 0) -> list[Event]:
        return await self.shards[lane].receive(hub, limit)

    async def send(self, room: str, events: Sequence[Event]) -> None:
        await self.for_room(room).send(room, events)

    async def send_rooms(
        self, by_room: dict[str, list[Envelope]], *, replicated: bool = False
    ) -> None:
        by_shard = self.split(by_room, str)
        await on_each(
            [
                self.shards[i].send_rooms({r: by_room[r] for r in rooms}, replicated=replicated)
                for i, rooms in by_shard.items()
            ]
        )

    async def send_to(self, hub: str, event: Event) -> None:
        await self.for_room(_room_of(event)).send_to(hub, event)

    async def append_and_deliver(
        self, window: ShardedWindow, envelopes: Sequence[Envelope], once: Once
    ) -> list[int] | None:
        """`RedisTransport.append_and_deliver`, for a burst whose rooms share a shard; None
        (nothing done) for one that spans shards, which takes the usual two steps."""
        lanes = {self.index(envelope["room"]) for envelope in envelopes}
        if len(lanes) != 1:
            return None
        [lane] = lanes
        return await self.shards[lane].append_and_deliver(window.shards[lane], envelopes, once)


class _Inbox:
    __slots__ = ("events", "ready")

    def __init__(self) -> None:
        self.events: deque[Event] = deque()
        self.ready = asyncio.Event()


class LocalTransport:
    """Events in memory, for a gateway of one process."""

    lanes = 1

    def __init__(self, *, capacity: int) -> None:
        self.capacity = capacity
        self._inboxes: dict[str, _Inbox] = {}
        self._rooms: dict[str, set[str]] = {}

    async def open_hub(self) -> str:
        hub = uuid.uuid4().hex
        self._inboxes[hub] = _Inbox()
        return hub

    def lane_of(self, room: str) -> int:
        return 0

    async def join(self, hub: str, room: str) -> None:
        self._rooms.setdefault(room, set()).add(hub)

    async def leave(self, hub: str, room: str) -> None:
        hubs = self._rooms.get(room)
        if hubs is not None:
            hubs.discard(hub)
            if not hubs:
                del self._rooms[room]

    async def renew(self, hub: str, rooms: Iterable[str]) -> None:
        for room in rooms:
            await self.join(hub, room)

    def hubs_in(self, room: str) -> set[str]:
        """The hubs that get ``room``'s events."""
        return set(self._rooms.get(room, ()))

    async def receive(self, hub: str, limit: int, lane: int = 0) -> list[Event]:
        inbox = self._inboxes.setdefault(hub, _Inbox())
        if not inbox.events:
            inbox.ready.clear()
            try:
                await asyncio.wait_for(inbox.ready.wait(), BLOCK_SECONDS)
            except TimeoutError:
                return []
        return [inbox.events.popleft() for _ in range(min(limit, len(inbox.events)))]

    def _push(self, hub: str, event: Event) -> None:
        inbox = self._inboxes.get(hub)
        if inbox is None:
            return  # the hub has gone
        if len(inbox.events) >= self.capacity:
            _count_full([hub, _weight(event)])
            return
        inbox.events.append(event)
        inbox.ready.set()

    async def send(self, room: str, events: Sequence[Event]) -> None:
        for hub in list(self._rooms.get(room, ())):
            for event in events:
                self._push(hub, event)

    async def send_rooms(
        self, by_room: dict[str, list[Envelope]], *, replicated: bool = False
    ) -> None:
        for room, envelopes in by_room.items():
            await self.send(room, _chunks(envelopes))

    async def send_to(self, hub: str, event: Event) -> None:
        self._push(hub, event)


def _now() -> float:
    return time.time()


_transports: dict[tuple[Any, Any, int], Transport] = {}


def transport() -> Transport:
    """This event loop's transport: through Redis when the processes share one."""
    return per_loop(_transports, _make_transport)


def _make_transport() -> Transport:
    capacity = int(getattr(settings, "CHANNEL_CAPACITY", 1000))
    if not uses_redis():
        return LocalTransport(capacity=capacity)
    shards = [
        RedisTransport(
            client,
            prefix=f"gateway:{gateway_settings().gateway_id}:",
            capacity=capacity,
            membership_seconds=int(getattr(settings, "CHANNEL_GROUP_EXPIRY", 86400)),
            replica_wait=ReplicaWait(int(getattr(settings, "REDIS_REPLICA_WAIT_MS", 1000))),
        )
        for client in shard_clients()
    ]
    return shards[0] if len(shards) == 1 else ShardedTransport(shards, shard_names())
