"""Room history: every message gets a ``seq`` that orders it within its room, and is kept.

Two tiers. The recent window (the last `WINDOW` messages of each room) lives in Redis when the
processes share one, a sorted set per room written by the same script that allocates the ``seq``;
in a single process, a deque. It is written *before* the message is sent to the room, so a
browser that joins (its process joins the room first, then reads the window) gets every
message either from the window or live, and drops the overlap by ``seq``: no gap, no
duplicate. The database keeps
messages for longer (retention by count and age), written off the hot path in batches that
grow with the load; a resume that reaches past the window reads it from there.

If Redis loses the counter (a restart without persistence), it is seeded again above the
highest ``seq`` in the database with a margin for batches not yet written, so ``seq`` never
goes backwards. If it keeps the counter but loses its last moves (a replica promoted before the
master's last writes reached it, a restart from a snapshot), the master's replication id has
changed; the gateway then moves its epoch (`gateway.shared`) and each room's next seq skips
`EPOCH_SKIP` ahead, so no seq a browser saw is given to another message.

A message the broker may deliver again (a device's QoS 1 message, whose id the bridge derives
from its delivery) is appended *once*: the script that gives it a ``seq`` records its id in the
same step, and `History.sent` marks it once it has been sent to its room. A redelivery (flagged
by the broker) after a bridge crash, however long the restart took, is then a copy that goes
no further if it was sent, or is sent again with its first ``seq`` if the crash came between
the append and the send: no loss, and no second ``seq``. Only flagged redeliveries are checked:
a fresh delivery that happens to get the same id as an old one (packet ids are reused once
acknowledged) records it again and goes through. Each room remembers the ids of its last
`ONCE_PER_ROOM` such messages, for up to an hour (the broker's session expiry). With Redis the
append and the delivery are one script (`gateway.transport`), so there is no step between them
to crash in.

Each room's window is held to `WINDOW` messages and a number of bytes, and its rows in the
database to ``HISTORY_MAX_MESSAGES`` and ``HISTORY_ROOM_BYTES``: a stranger who floods a room
pushes its oldest messages out, not the gateway's memory up. A row the database will not take
is counted and left out, and the rest of its batch written.
"""

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from types import MappingProxyType
from typing import Any, Protocol, cast

import msgpack
from channels.db import database_sync_to_async
from django.db import DatabaseError, InterfaceError, OperationalError, connection, transaction
from django.db.models import Max, Min, Sum
from django.utils import timezone

from gateway import metrics, stamps
from gateway.conf import gateway_settings
from gateway.envelope import Envelope
from gateway.jsonutil import dumps, parse_json
from gateway.models import MESSAGE_TABLE, Message
from gateway.shared import (
    EPOCH_SKIP,
    Sharded,
    on_each,
    per_loop,
    shard_clients,
    shard_names,
    uses_redis,
)

logger = logging.getLogger(__name__)

WINDOW = 1000  # recent messages per room kept in the window
WINDOW_BYTES = 4 << 20  # and their bytes, as encoded, at most (``HISTORY_WINDOW_BYTES``)
ROOM_BYTES = 64 << 20  # bytes a room's history may take in the database (``HISTORY_ROOM_BYTES``)
MAX_SEQ = 2**63 - 1  # a seq is a signed 64-bit integer in the database and in Redis
# How long the ids of redeliverable messages are remembered: as long as a broker keeps a bridge's
# session (its session expiry), so it cannot redeliver anything older.
ONCE_SECONDS = 3600
ONCE_LOCAL_LIMIT = 100_000  # ids remembered by a window in this process
# Ids remembered per room in Redis: a redelivery follows its first delivery within the messages
# the broker had in flight to the bridge, far fewer than this.
ONCE_PER_ROOM = 10_000
COPY = 0  # what `Window.append` gives a copy of a message already sent to its room

# Ids the broker may deliver again -> whether this delivery is flagged as a redelivery.
Once = Mapping[str, bool]
_NONE: Once = MappingProxyType({})
SEED_MARGIN = 10_000  # seq headroom after a lost counter, above what the database holds
PRUNE_SECONDS = 60.0
# The database writer waits this long after the first pending message, so a busy stream is
# written in a few batches a second instead of one per burst (the window has them meanwhile).
WRITE_LINGER_SECONDS = 0.05
WRITE_RETRY_SECONDS = 1.0  # after a failed write
WRITE_CHUNK_BYTES = 1 << 20  # rows inserted between checks of the rooms' bounds
KNOWN_SIZES = 10_000  # rooms whose bytes in the database this process keeps count of
PENDING_ROWS = 100_000  # rows kept for the database while it is away; the oldest go past that


def window_text(envelope: Envelope) -> str:
    """An envelope as the window keeps it, and as message events carry it: its JSON without
    the ``seq``, which travels beside it."""
    return dumps({k: v for k, v in envelope.items() if k != "seq"})


def parse_since(text: str) -> int:
    """A client's ``since`` (the last seq it saw): a whole number from 0 to `MAX_SEQ`.

    Raises:
        ValueError: with what is wrong, in words a client can act on.
    """
    text = text.strip()
    if not text.isascii() or not text.isdigit() or len(text) > len(str(MAX_SEQ)):
        raise ValueError(f"since must be the last seq you received, a whole number 0-{MAX_SEQ}")
    since = int(text)
    if since > MAX_SEQ:
        raise ValueError(f"since must be the last seq you received, a whole number 0-{MAX_SEQ}")
    return since


@dataclass(frozen=True, slots=True)
class Missed:
    """What a reconnecting browser missed.

    Attributes:
        messages: the messages after the given ``seq``, in order (the newest ones if capped,
            or, for a page, the oldest).
        gap: history no longer reaches back that far, or (not for a page) more was missed than
            can be sent.
        more: (a page) there are messages after the last one.
    """

    messages: list[Envelope]
    gap: bool
    more: bool = False


class Window(Protocol):
    """The recent messages of each room, and the ``seq`` counters."""

    async def append(self, envelopes: Sequence[Envelope], once: Once = _NONE) -> list[int | None]:
        """Give each envelope its room's next seq, in order (None: the room has no counter).

        The id of an envelope in ``once`` is recorded for its room; if ``once`` says it is a
        redelivery and its id was recorded already, it is not appended again: it gets `COPY`
        if it was `sent`, else its first seq, negated.
        """

    async def sent(self, envelopes: Sequence[Envelope]) -> None:
        """Record that these envelopes (appended with ``once``) reached their rooms."""

    async def seed(self, room: str, floor: int) -> None: ...

    async def after(self, room: str, seq: int, limit: int) -> list[Envelope]: ...

    async def oldest(self, room: str) -> int | None: ...

    async def tail(self, room: str, limit: int) -> tuple[int | None, list[Envelope]]:
        """The room's counter (None before its first message) and its newest ``limit``
        messages, oldest first; the counter is read first."""
        ...

    async def forget(self, room: str) -> None:
        """Drop the room's recent messages (its counter stays: seqs never go back)."""


# What both append scripts share. ARGV[1..6]: window size (messages), window bytes, window TTL,
# once TTL, key prefix, and the envelopes as one MessagePack array of [room, id, JSON, mode]
# (mode '0': no once key; '1': a first delivery, whose id is recorded; '2': a flagged
# redelivery). One argument for them all: the client's cost per argument is most of a burst's.
# The keys are named here, from the rooms.
_RECORDS = """
local size, max_bytes, ttl, once_ttl, prefix = tonumber(ARGV[1]), tonumber(ARGV[2]),
  tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
local records = cmsgpack.unpack(ARGV[6])
-- The epoch moves when Redis's master changes (`gateway.shared`): a room's first seq in a new
-- epoch skips EPOCH_SKIP, past any the old master gave out but never replicated.
local epoch, skipped = tonumber(redis.call('GET', prefix .. 'epoch') or '0'), {}
local function keys(record)
  local room = record[1]
  return prefix .. 'seq:' .. room, prefix .. 'window:' .. room
end
-- What a redeliverable message's id is known as in its room: its seq, 'sent', or false.
local function once_get(room, id)
  return redis.call('HGET', prefix .. 'once:' .. room, id)
end
-- Records an id's state; with a seq (a new record), its place among the room's ids, of which
-- the room keeps the newest ONCE_PER_ROOM.
local function once_set(room, id, value, seq)
  local ids, order = prefix .. 'once:' .. room, prefix .. 'once-order:' .. room
  redis.call('HSET', ids, id, value)
  if seq then
    redis.call('ZADD', order, seq, id)
    if redis.call('ZCARD', order) > ONCE_PER_ROOM then
      redis.call('HDEL', ids, redis.call('ZPOPMIN', order)[1])
    end
  end
  redis.call('EXPIRE', ids, once_ttl)
  redis.call('EXPIRE', order, once_ttl)
end
-- Gives a member its room's next seq and keeps the room's window within its size and its bytes
-- (the newest message stays, whatever its size). The bytes are counted beside the window.
local function keep(counter, window, member)
  if epoch > 0 and not skipped[counter] then
    skipped[counter] = true
    local mark = counter .. ':epoch'
    if tonumber(redis.call('GET', mark) or '0') < epoch then
      redis.call('INCRBY', counter, EPOCH_SKIP)
      redis.call('SET', mark, epoch, 'EX', ttl)
    end
  end
  local seq = redis.call('INCR', counter)
  redis.call('ZADD', window, seq, member)
  local bytes = window .. ':bytes'
  local total = redis.call('INCRBY', bytes, #member)
  local kept = redis.call('ZCARD', window)
  while kept > 1 and (kept > size or total > max_bytes) do
    local oldest = redis.call('ZPOPMIN', window)
    total = redis.call('INCRBY', bytes, -#oldest[1])
    kept = kept - 1
  end
  if total < #member then redis.call('SET', bytes, #member) end  -- counted from a later start
  redis.call('EXPIRE', counter, ttl)
  redis.call('EXPIRE', window, ttl)
  redis.call('EXPIRE', bytes, ttl)
  return seq
end
""".replace("ONCE_PER_ROOM", str(ONCE_PER_ROOM)).replace("EPOCH_SKIP", str(EPOCH_SKIP))
# Appends a batch, in order (ARGV: see `_RECORDS`). Per envelope: false (no counter), its seq,
# COPY (0), or the negated seq of its first append.
_APPEND = (
    _RECORDS
    + """
local results = {}
for i, record in ipairs(records) do
  local counter, window = keys(record)
  local room, id, mode = record[1], record[2], record[4]
  local result = false
  if redis.call('EXISTS', counter) == 1 then
    local known = false
    if mode == '2' then known = once_get(room, id) end
    if known == 'sent' then
      result = 0
    elseif known then
      result = -tonumber(known)
    else
      result = keep(counter, window, record[3])
      if mode ~= '0' then once_set(room, id, result, result) end
    end
  end
  results[i] = result
end
return results
"""
)


# `_RECORDS`, then seqs for the whole burst, marking once keys sent: what the transport's script
# that appends and delivers in one step starts with (`gateway.transport`). Leaves ``seqs`` nil,
# having done nothing, if a room has no counter yet; else per envelope its seq, or COPY (0) for
# a copy of a message sent before.
APPEND_RECORDS_LUA = (
    _RECORDS
    + """
local seqs = {}
for _, record in ipairs(records) do
  if redis.call('EXISTS', prefix .. 'seq:' .. record[1]) == 0 then seqs = nil break end
end
if seqs then
  for i, record in ipairs(records) do
    local counter, window = keys(record)
    local room, id, mode = record[1], record[2], record[4]
    local known = false
    if mode == '2' then known = once_get(room, id) end
    local seq, fresh = 0, false
    if known == 'sent' then
      seq = 0
    elseif known then
      seq = tonumber(known)
    else
      seq, fresh = keep(counter, window, record[3]), true
    end
    if mode ~= '0' and seq ~= 0 then once_set(room, id, 'sent', fresh and seq or nil) end
    seqs[i] = seq
  end
end
"""
)


# Starts a room's counter at a floor unless it has one: a counter started in this epoch has
# nothing to skip. ARGV: the counter's key, the floor, the key prefix, the TTL.
_SEED = """
if redis.call('SET', ARGV[1], ARGV[2], 'NX') then
  local epoch = redis.call('GET', ARGV[3] .. 'epoch')
  if epoch then redis.call('SET', ARGV[1] .. ':epoch', epoch, 'EX', ARGV[4]) end
end
return 0
"""


# Marks recorded ids sent. ARGV: key prefix, one MessagePack array of [room, id].
_SENT = """
for _, pair in ipairs(cmsgpack.unpack(ARGV[2])) do
  local ids = ARGV[1] .. 'once:' .. pair[1]
  if redis.call('HEXISTS', ids, pair[2]) == 1 then redis.call('HSET', ids, pair[2], 'sent') end
end
return 0
"""


class RedisWindow:
    """The window in Redis."""

    def __init__(
        self,
        client: Any,
        *,
        prefix: str,
        window: int,
        ttl_seconds: int,
        max_bytes: int = WINDOW_BYTES,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.window = window
        self.ttl = ttl_seconds
        self.max_bytes = max_bytes

    def _keys(self, room: str) -> tuple[str, str]:
        # The scripts name them the same way (`_RECORDS`).
        return f"{self.prefix}seq:{room}", f"{self.prefix}window:{room}"

    async def append(self, envelopes: Sequence[Envelope], once: Once = _NONE) -> list[int | None]:
        # One script for the whole batch, the envelopes in order: seqs follow arrival, and a
        # burst costs one round trip, not one command per message.
        found = await self.client.eval(_APPEND, 0, *self.script_args(envelopes, once))
        return [int(seq) if seq is not None else None for seq in found]

    def script_args(self, envelopes: Sequence[Envelope], once: Once) -> list[Any]:
        """The arguments of a script that starts with `_RECORDS`, for ``envelopes``."""
        records = []
        for envelope in envelopes:
            redelivery = once.get(envelope["id"])
            member = window_text(envelope)
            mode = "0" if redelivery is None else "2" if redelivery else "1"
            records.append([envelope["room"], envelope["id"], member, mode])
        # MessagePack's old raw strings: what every Redis's Lua reads.
        records_packed = msgpack.packb(records, use_bin_type=False)
        return [self.window, self.max_bytes, self.ttl, ONCE_SECONDS, self.prefix, records_packed]

    async def sent(self, envelopes: Sequence[Envelope]) -> None:
        pairs = [[envelope["room"], envelope["id"]] for envelope in envelopes]
        await self.client.eval(_SENT, 0, self.prefix, msgpack.packb(pairs, use_bin_type=False))

    async def seed(self, room: str, floor: int) -> None:
        counter, _ = self._keys(room)
        await self.client.eval(_SEED, 0, counter, floor, self.prefix, self.ttl)

    async def after(self, room: str, seq: int, limit: int) -> list[Envelope]:
        _, window = self._keys(room)
        rows = await self.client.zrangebyscore(
            window, f"({seq}", "+inf", start=0, num=limit, withscores=True
        )
        return [_with_seq(parse_json(member), int(score)) for member, score in rows]

    async def oldest(self, room: str) -> int | None:
        _, window = self._keys(room)
        rows = await self.client.zrange(window, 0, 0, withscores=True)
        return int(rows[0][1]) if rows else None

    async def tail(self, room: str, limit: int) -> tuple[int | None, list[Envelope]]:
        counter, window = self._keys(room)
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.get(counter)
            pipe.zrange(window, -limit, -1, withscores=True)
            value, rows = await pipe.execute()
        messages = [_with_seq(parse_json(member), int(score)) for member, score in rows]
        return (int(value) if value is not None else None), messages

    async def forget(self, room: str) -> None:
        _, window = self._keys(room)
        once = f"{self.prefix}once:{room}"
        await self.client.delete(window, f"{window}:bytes", once, f"{self.prefix}once-order:{room}")


class ShardedWindow(Sharded[RedisWindow]):
    """The window in several Redis servers, each room's in its shard's."""

    async def append(self, envelopes: Sequence[Envelope], once: Once = _NONE) -> list[int | None]:
        by_shard = self.split(range(len(envelopes)), lambda i: envelopes[i]["room"])
        found = await on_each(
            [
                self.shards[shard].append([envelopes[i] for i in indices], once)
                for shard, indices in by_shard.items()
            ]
        )
        seqs: list[int | None] = [None] * len(envelopes)
        for indices, given in zip(by_shard.values(), found, strict=True):
            for i, seq in zip(indices, given, strict=True):
                seqs[i] = seq
        return seqs

    async def sent(self, envelopes: Sequence[Envelope]) -> None:
        by_shard = self.split(envelopes, lambda e: e["room"])
        await on_each([self.shards[i].sent(some) for i, some in by_shard.items()])

    async def seed(self, room: str, floor: int) -> None:
        await self.for_room(room).seed(room, floor)

    async def after(self, room: str, seq: int, limit: int) -> list[Envelope]:
        return await self.for_room(room).after(room, seq, limit)

    async def oldest(self, room: str) -> int | None:
        return await self.for_room(room).oldest(room)

    async def tail(self, room: str, limit: int) -> tuple[int | None, list[Envelope]]:
        return await self.for_room(room).tail(room, limit)

    async def forget(self, room: str) -> None:
        await self.for_room(room).forget(room)


class LocalWindow:
    """The window in this process, for a gateway that runs as one process."""

    def __init__(self, *, window: int, max_bytes: int = WINDOW_BYTES) -> None:
        self.window = window
        self.max_bytes = max_bytes
        self._counters: dict[str, int] = {}
        self._messages: dict[str, deque[tuple[Envelope, int]]] = {}  # with their sizes
        self._bytes: dict[str, int] = {}
        # (room, id) -> its seq, or COPY once sent; oldest first
        self._once: dict[tuple[str, str], int] = {}

    async def append(self, envelopes: Sequence[Envelope], once: Once = _NONE) -> list[int | None]:
        return [self._append(envelope, once.get(envelope["id"])) for envelope in envelopes]

    def _append(self, envelope: Envelope, redelivery: bool | None) -> int | None:
        room = envelope["room"]
        if room not in self._counters:
            return None
        key = (room, envelope["id"])
        if redelivery and key in self._once:
            known = self._once[key]
            return COPY if known == COPY else -known
        seq = self._counters[room] = self._counters[room] + 1
        kept = self._messages.setdefault(room, deque())
        size = len(dumps(envelope))
        kept.append((_with_seq(dict(envelope), seq), size))
        total = self._bytes.get(room, 0) + size
        while len(kept) > 1 and (len(kept) > self.window or total > self.max_bytes):
            total -= kept.popleft()[1]
        self._bytes[room] = total
        if redelivery is not None:
            self._once.pop(key, None)  # recorded again: the newest are kept
            self._once[key] = seq
            if len(self._once) > ONCE_LOCAL_LIMIT:
                del self._once[next(iter(self._once))]
        return seq

    async def sent(self, envelopes: Sequence[Envelope]) -> None:
        for envelope in envelopes:
            key = (envelope["room"], envelope["id"])
            if key in self._once:
                self._once[key] = COPY

    async def seed(self, room: str, floor: int) -> None:
        self._counters.setdefault(room, floor)

    async def after(self, room: str, seq: int, limit: int) -> list[Envelope]:
        kept = self._messages.get(room, ())
        return [m for m, _ in kept if m["seq"] > seq][:limit]

    async def oldest(self, room: str) -> int | None:
        kept = self._messages.get(room)
        return kept[0][0]["seq"] if kept else None

    async def tail(self, room: str, limit: int) -> tuple[int | None, list[Envelope]]:
        kept = self._messages.get(room, ())
        return self._counters.get(room), [m for m, _ in list(kept)[-limit:]]

    async def forget(self, room: str) -> None:
        self._messages.pop(room, None)
        self._bytes.pop(room, None)


def _with_seq(value: Any, seq: int) -> Envelope:
    envelope = cast(Envelope, value)
    envelope["seq"] = seq
    return envelope


class History:
    """Allocates ``seq``, keeps the window, writes the database, answers resumes."""

    def __init__(
        self,
        window: Window,
        *,
        max_messages: int,
        max_age: timedelta,
        max_bytes: int = ROOM_BYTES,
    ) -> None:
        self.window = window
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self._stored: dict[str, int] = {}  # room -> its bytes in the database, as last known
        self.max_age = max_age
        self._pending: list[Envelope] = []
        self._touched: set[str] = set()
        self._writer: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._flushing = asyncio.Lock()
        # Rooms' last messages read from the database, while each room's counter stands (at
        # most 8 MiB of them, none older than 10 s: prunes do not move a counter).
        self._stored_tails: stamps.Stamped[list[Envelope]] = stamps.Stamped(
            max_entries=1_000, max_age=10.0, max_cost=8 << 20
        )

    async def append(self, envelopes: Sequence[Envelope], once: Once = _NONE) -> list[Envelope]:
        """Give each envelope its room's next ``seq`` (in order) and keep it; the envelopes
        to send, leaving out redeliveries of those already sent (``once``: see `Window`).

        A redelivery of one appended but never sent keeps its first ``seq`` and is not kept
        again; call `sent` once the envelopes have been sent to their rooms."""
        seqs = await self.window.append(envelopes, once) if envelopes else []
        new: list[Envelope] = []
        for envelope, given in zip(envelopes, seqs, strict=True):
            seq = given
            if seq is None:  # no counter yet (first message, or Redis lost it)
                floor = await database_sync_to_async(_highest_seq)(envelope["room"])
                await self.window.seed(envelope["room"], floor + SEED_MARGIN if floor else 0)
                [seq] = await self.window.append([envelope], once)
                assert seq is not None
            if self._take(envelope, seq):
                new.append(envelope)
        return new

    def take(self, envelopes: Sequence[Envelope], seqs: Sequence[int]) -> list[Envelope]:
        """Number and keep envelopes a script appended (`APPEND_RECORDS_LUA`); those that are
        not copies of messages sent before."""
        return [e for e, seq in zip(envelopes, seqs, strict=True) if self._take(e, seq)]

    def _take(self, envelope: Envelope, seq: int) -> bool:
        """Number and keep an appended envelope, unless the window says it is a copy (counted).

        A negative seq: appended before a crash, perhaps never sent; it is sent now, with its
        first seq, and kept again (the database keeps one copy per id)."""
        if seq == COPY:
            metrics.inc("duplicates_removed", "redelivery")
            return False
        envelope["seq"] = abs(seq)
        self._keep(envelope)
        return True

    async def sent(self, envelopes: Sequence[Envelope]) -> None:
        """Record that ``envelopes``, appended with ``once``, have been sent to their rooms:
        a redelivery of one of them is a copy from now on."""
        if envelopes:
            await self.window.sent(envelopes)

    def _keep(self, envelope: Envelope) -> None:
        self._pending.append(envelope)
        self._touched.add(envelope["room"])
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._write(), name="history")
        self._wake.set()

    async def missed(
        self, room: str, since: int, limit: int = WINDOW, *, page: bool = False
    ) -> Missed:
        """The messages of ``room`` after ``since``, for a browser that reconnects: the newest
        ``limit`` (and a gap) if more were missed; with ``page``, the oldest ``limit`` (and
        ``more``)."""
        recent, oldest_recent = await asyncio.gather(
            self.window.after(room, since, limit + 1), self.window.oldest(room)
        )
        # The window holds every message from its oldest on: when that is the next one after
        # ``since``, nothing was lost and the database need not be asked (a reconnect storm
        # of thousands of sockets asks nothing of it).
        covered = oldest_recent is not None and oldest_recent <= since + 1
        older: list[Envelope] = []
        gap = False
        if not covered:
            older = await database_sync_to_async(_stored_after)(
                room, since, oldest_recent, limit + 1
            )
            first_kept = await database_sync_to_async(_lowest_seq)(room)
            if oldest_recent is not None and (first_kept is None or oldest_recent < first_kept):
                first_kept = oldest_recent
            gap = first_kept is not None and since + 1 < first_kept
        seen: set[str] = set()
        messages: list[Envelope] = []
        for message in [*older, *recent]:
            if message["id"] not in seen:  # a crash redelivery kept twice in the window
                seen.add(message["id"])
                messages.append(message)
        if len(messages) > limit and page:
            return Missed(messages[:limit], gap, more=True)
        if len(messages) > limit:  # too much to catch up on: the newest, and say so
            return Missed(await self.recent(room, limit), gap=True)
        return Missed(messages, gap)

    async def recent(self, room: str, limit: int) -> list[Envelope]:
        """The last ``limit`` messages of ``room``, oldest first (those read from the database
        are shared: copy one before changing it)."""
        counter, latest = await self.window.tail(room, limit)
        if latest:
            return latest
        # An empty window: a room without messages, or whose window expired or was lost.
        # The database's answer holds until the room's counter moves.
        load = partial(database_sync_to_async(_stored_last), room, limit)
        return await self._stored_tails.answer((room, limit), counter, load)

    async def forget(self, room: str) -> None:
        """Drop ``room``'s recent window (its records in the database are the caller's)."""
        await self.window.forget(room)

    async def flush(self) -> None:
        """Write what is pending to the database now (one write at a time)."""
        async with self._flushing:
            rows, self._pending = self._pending, []
            if not rows:
                return
            hold = Hold(self._stored, self.max_messages, self.max_bytes)
            try:
                await database_sync_to_async(_write_rows)(rows, hold)
            except (OperationalError, InterfaceError):
                # The database is away or busy: keep the batch (the newest `PENDING_ROWS`) for
                # the next round, and let the writer log and back off.
                kept = [*rows, *self._pending]
                if len(kept) > PENDING_ROWS:
                    lost = len(kept) - PENDING_ROWS
                    metrics.inc("history_rows_lost", "database_unavailable", lost)
                    kept = kept[lost:]
                self._pending = kept
                raise
            except DatabaseError:
                # A row the database will not take, whatever the retries: write the others.
                await database_sync_to_async(_write_each)(rows, hold)

    async def close(self) -> None:
        """Stop the writer, and write what is still pending."""
        if self._writer is not None:
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
            self._writer = None
        await self.flush()

    async def _write(self) -> None:
        # Writes `WRITE_LINGER_SECONDS` after something is pending; what arrives during a write
        # waits for the next one, so batches grow with the load.
        last_prune = asyncio.get_running_loop().time()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), PRUNE_SECONDS)
            await asyncio.sleep(WRITE_LINGER_SECONDS if self._pending else 0)
            self._wake.clear()
            try:
                await self.flush()
                now = asyncio.get_running_loop().time()
                if now - last_prune >= PRUNE_SECONDS:
                    rooms, self._touched = self._touched, set()
                    last_prune = now
                    await database_sync_to_async(_prune)(
                        rooms, self.max_messages, self.max_age, self.max_bytes
                    )
            except asyncio.CancelledError:
                raise
            except Exception:
                metrics.inc("history_write_failures")
                logger.exception("writing history failed; retrying in %.0f s", WRITE_RETRY_SECONDS)
                await asyncio.sleep(WRITE_RETRY_SECONDS)


def _highest_seq(room: str) -> int:
    return int(Message.objects.filter(room=room).aggregate(top=Max("seq"))["top"] or 0)


def _lowest_seq(room: str) -> int | None:
    low = Message.objects.filter(room=room).aggregate(low=Min("seq"))["low"]
    return int(low) if low is not None else None


def _stored_after(room: str, since: int, before: int | None, limit: int) -> list[Envelope]:
    rows = Message.objects.filter(room=room, seq__gt=since)
    if before is not None:
        rows = rows.filter(seq__lt=before)
    return [cast(Envelope, row.envelope) for row in rows.order_by("seq")[:limit]]


def _stored_last(room: str, limit: int) -> tuple[list[Envelope], int]:
    """The last ``limit`` messages of ``room`` in the database, oldest first, and their bytes."""
    rows = list(Message.objects.filter(room=room).order_by("-seq")[:limit])
    return [cast(Envelope, row.envelope) for row in reversed(rows)], sum(r.size for r in rows)


@dataclass(slots=True)
class Hold:
    """What keeps each room's rows within their bounds as they are written: the bytes each room
    holds as this process last knew them (shared with the history, updated as rows go in), and
    the bounds. Another process's writes to the same room are seen at the next prune."""

    stored: dict[str, int]
    max_messages: int
    max_bytes: int


def _write_rows(envelopes: list[Envelope], hold: Hold) -> None:
    """Insert ``envelopes`` (a copy already stored is left alone), `WRITE_CHUNK_BYTES` at a
    time; after each chunk, a room over its bounds is pruned to them in the same transaction,
    so no reader sees it over them by more than a chunk, and none once the write is done."""
    # Plain SQL: the ORM's bulk_create costs several times more per row, and at thousands of
    # messages a second this thread competes with the event loop for the interpreter.
    table = connection.ops.quote_name(MESSAGE_TABLE)
    sql = (
        f"INSERT INTO {table} (room, seq, message_id, envelope, size, created_at) "  # noqa: S608
        "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING"
    )
    now = connection.ops.adapt_datetimefield_value(timezone.now())
    limit = max(1, min(WRITE_CHUNK_BYTES, hold.max_bytes // 4))
    with transaction.atomic(), connection.cursor() as cursor:
        chunk: list[tuple[Any, ...]] = []
        chunk_bytes = 0
        for position, e in enumerate(envelopes):
            text = dumps(e)
            size = len(text.encode())
            chunk.append((e["room"], e["seq"], e["id"], text, size, now))
            chunk_bytes += size
            if chunk_bytes < limit and position < len(envelopes) - 1:
                continue
            for room in {row[0] for row in chunk} - hold.stored.keys():
                hold.stored[room] = _stored_bytes(room)  # first sight in this process
            cursor.executemany(sql, chunk)
            for room, _, _, _, written, _ in chunk:
                hold.stored[room] += written
            for room in [r for r, stored in hold.stored.items() if stored > hold.max_bytes]:
                hold.stored[room] = _hold(room, hold.max_messages, hold.max_bytes)
            chunk, chunk_bytes = [], 0
    while len(hold.stored) > KNOWN_SIZES:
        del hold.stored[next(iter(hold.stored))]


def _stored_bytes(room: str) -> int:
    return int(Message.objects.filter(room=room).aggregate(total=Sum("size"))["total"] or 0)


def _write_each(envelopes: list[Envelope], hold: Hold) -> None:
    """`_write_rows`, a row at a time: a row the database refuses is counted and logged, and
    the others are written."""
    for envelope in envelopes:
        try:
            _write_rows([envelope], hold)
        except DatabaseError as exc:
            detail = f"room {envelope['room']} seq {envelope.get('seq')}: {exc}"
            metrics.inc("history_rows_lost", "refused_by_database")
            logger.warning("history row not written (kept in the recent window): %s", detail[:300])


def _prune(rooms: set[str], max_messages: int, max_age: timedelta, max_bytes: int) -> None:
    """Drop what is past its age, and hold each of ``rooms`` to its bounds (`_hold`)."""
    Message.objects.filter(created_at__lt=timezone.now() - max_age).delete()
    for room in rooms:
        _hold(room, max_messages, max_bytes)


def _hold(room: str, max_messages: int, max_bytes: int) -> int:
    """Drop ``room``'s oldest messages past ``max_messages`` or ``max_bytes`` (the newest
    message stays, whatever its size); the bytes it keeps."""
    rows = Message.objects.filter(room=room)
    cutoff = rows.order_by("-seq").values_list("seq", flat=True)[max_messages : max_messages + 1]
    if cutoff:
        rows.filter(seq__lte=cutoff[0]).delete()
    stored = _stored_bytes(room)
    if stored <= max_bytes:
        return stored
    total = 0
    for kept, (seq, size) in enumerate(rows.order_by("-seq").values_list("seq", "size")):
        if kept > 0 and total + size > max_bytes:
            rows.filter(seq__lte=seq).delete()
            break
        total += size
    return total


_histories: dict[tuple[Any, Any, int], History] = {}


async def close_histories() -> None:
    """Close every history of this process (their writers stop, pending rows are written)."""
    for kept in list(_histories.values()):
        await kept.close()
    _histories.clear()


def history_for() -> History:
    """This event loop's history (its window in Redis when the processes share one)."""
    return per_loop(_histories, _make_history)


def _make_history() -> History:
    conf = gateway_settings()
    window: Window
    if uses_redis():
        windows = [
            RedisWindow(
                client,
                prefix=f"gateway:{conf.gateway_id}:",
                window=WINDOW,
                ttl_seconds=int(conf.history_max_age.total_seconds()),
                max_bytes=conf.history_window_bytes,
            )
            for client in shard_clients()
        ]
        window = windows[0] if len(windows) == 1 else ShardedWindow(windows, shard_names())
    else:
        window = LocalWindow(window=WINDOW, max_bytes=conf.history_window_bytes)
    return History(
        window,
        max_messages=conf.history_max_messages,
        max_age=conf.history_max_age,
        max_bytes=conf.history_room_bytes,
    )
