"""Fan-out inside one ASGI server process: one delivery per room and process, not per socket.

Channels' usual pattern puts every socket in its room's group, so a message to a room of 100
sockets is 100 channel-layer messages, each serialised, queued in Redis, read back and
dispatched to a consumer that encodes the same JSON again. Here each process has one hub: the
hub is the process's one member of each room it has sockets in, on the gateway's transport
(`gateway.transport`), and it encodes each message once and writes the frame to every local
socket of the room. On daphne the frame is framed once, too, and written straight to each
connection (`protocols.outlets`).

A socket that joins is held (its frames queued) until its welcome frame is out, and then gets
only what is newer than the welcome, so that a message is either in the welcome or arrives
after it, never both and never neither.

Presence is gathered per room, not sent per change: the joins and leaves of an interval
(`GATEWAY_PRESENCE_INTERVAL`) go out as one frame, ``{"type": "presence", "count", "joined",
"left"}``. In a room of more than `GATEWAY_PRESENCE_LIST_MAX` members the sockets get the count
alone, at most once a `GATEWAY_PRESENCE_COUNT_INTERVAL`, so a room that N sockets join costs
O(N) frames, not O(N²). A socket that does not hold the member list (its welcome had only the
count, or it missed a frame while its welcome was being read) is sent the whole list,
``"members"``, once the room is small enough again. Every change takes the room's next presence
version; the count sent is the one of the newest change, whichever process made it.

A socket that stops reading is not allowed to grow the server's memory: once more than
`SEND_BACKLOG_BYTES` wait for it in the server it is closed with 1013 (try
again later), and the frames it missed are counted. Its client resumes from its last ``seq``.
"""

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable
from datetime import datetime
from typing import Any, cast

from django.conf import settings

from gateway import metrics
from gateway.conf import gateway_settings
from gateway.envelope import Envelope
from gateway.history import history_for
from gateway.jsonutil import dumps
from gateway.presence import presence_for
from gateway.shared import per_loop
from gateway.transport import (
    ROOM_ERROR,
    ROOM_MESSAGES,
    ROOM_PRESENCE,
    ErrorEvent,
    Event,
    MessagesEvent,
    PresenceEvent,
    PresenceMember,
    Transport,
    transport,
)
from protocols.outlets import CLOSE_SLOW, Frame, Outlet

logger = logging.getLogger(__name__)

PENDING_FRAMES = 10_000  # frames held for a socket while its welcome is being prepared
DEDUPE_WINDOW = 256  # recent ids per room: a redelivered copy comes soon after the original
RETRY_SECONDS = (0.1, 0.5, 1.0, 2.0)  # waits between attempts when the layer fails
RECEIVE_EVENTS = 100  # channel-layer events read at once, at most
RENEW_FRACTION = 0.25  # renew group memberships every quarter of the layer's group expiry


class Subscriber:
    """One socket in a room, as the hub sees it."""

    __slots__ = (
        "gone",
        "key",
        "listed",
        "outlet",
        "pending",
        "presence_reset",
        "presence_version",
        "watermark",
    )

    def __init__(self, key: str, outlet: Outlet) -> None:
        self.key = key  # its presence key
        self.outlet = outlet
        self.watermark = 0  # the seq of its welcome: older messages were in it
        self.pending: list[tuple[int, Frame]] | None = []  # until its welcome is out
        self.gone = False
        # The presence version its welcome was read at (None: not read yet), whether it holds
        # the member list, and whether it must be sent the room's presence whole.
        self.presence_version: int | None = None
        self.listed = False
        self.presence_reset = False

    def deliver(self, frame: Frame, seq: int) -> None:
        if self.gone:
            metrics.inc("messages_dropped", "slow_consumer")
            return
        if self.pending is not None:
            if len(self.pending) >= PENDING_FRAMES:
                self._too_slow()
                return
            self.pending.append((seq, frame))
        elif 0 < seq <= self.watermark:
            metrics.inc("duplicates_removed")  # in its welcome already
        elif not self.outlet.write(frame):
            self._too_slow()

    def welcome(self, frame: Frame, watermark: int) -> None:
        """Send its welcome (with every message up to ``watermark``), then what waited: through
        its outlet, like every frame after it, so it counts against what the socket may leave
        unread; a socket too far behind to take it is closed as any other."""
        if self.outlet.write(frame):
            self.ready(watermark)
        else:
            self._too_slow()

    def ready(self, watermark: int) -> None:
        """Its welcome (with every message up to ``watermark``) is out: send what waited."""
        self.watermark = watermark
        pending, self.pending = self.pending or [], None
        for seq, frame in pending:
            self.deliver(frame, seq)

    def _too_slow(self) -> None:
        self.gone = True
        metrics.inc("ws_closed", "slow_consumer")
        metrics.inc("messages_dropped", "slow_consumer")
        logger.warning("closing socket %s: it stopped reading (1013)", self.key)
        try:
            self.outlet.close(CLOSE_SLOW)
        except Exception:  # the others in the room must not pay for it
            logger.exception("closing socket %s failed", self.key)


class _RoomPresence:
    """A room's presence changes waiting to go out, and the newest version and count seen."""

    __slots__ = ("changed", "changes", "count", "flush", "version")

    def __init__(self) -> None:
        self.changes: dict[str, tuple[str, PresenceMember]] = {}  # key -> its last change
        self.changed = False
        self.version = 0
        self.count = 0
        self.flush: asyncio.Task[None] | None = None


class RoomHub:
    """This process's member of every room it has sockets for."""

    def __init__(self, rooms: Transport) -> None:
        self.transport = rooms
        self.channel: str | None = None  # the hub's id on the transport: its inbox
        self.rooms: dict[str, dict[str, Subscriber]] = {}
        self._joined: set[str] = set()  # rooms the hub is a member of on the transport
        # One lock per room being joined or left (with how many hold or wait for it): a burst
        # of sockets into new rooms joins them side by side, not one after another.
        self._room_locks: dict[str, tuple[asyncio.Lock, list[int]]] = {}
        self._starting = asyncio.Lock()
        self._seen: dict[str, tuple[deque[str], set[str]]] = {}
        self._delivered: dict[str, int] = {}  # room -> the highest seq fanned out
        # room -> (the highest seq, the ids) a catch-up sent from history: events still queued
        # for the hub repeat them, more than the dedupe window can hold.
        self._replayed: dict[str, tuple[int, set[str]]] = {}
        self._presence_of: dict[str, _RoomPresence] = {}
        self._readers: dict[int, asyncio.Task[None]] = {}  # one per lane of the transport
        self._renewer: asyncio.Task[None] | None = None

    async def join(self, room: str, subscriber: Subscriber) -> None:
        """Add ``subscriber`` to ``room``; the room's messages reach it from now on."""
        self.rooms.setdefault(room, {})[subscriber.key] = subscriber
        if room in self._joined:
            return
        async with self._starting:
            await self._start()
        async with self._membership(room):
            if room not in self._joined and room in self.rooms:
                assert self.channel is not None
                await self.transport.join(self.channel, room)
                self._joined.add(room)
                metrics.set_gauge("fanout_rooms", len(self._joined))

    async def leave(self, room: str, subscriber: Subscriber) -> None:
        """Remove ``subscriber``; the last one out takes the hub out of the room."""
        subscriber.gone = True
        members = self.rooms.get(room)
        if members is None or members.get(subscriber.key) is not subscriber:
            return
        del members[subscriber.key]
        if members:
            return
        del self.rooms[room]
        self._seen.pop(room, None)
        self._delivered.pop(room, None)
        self._replayed.pop(room, None)
        state = self._presence_of.pop(room, None)
        if state is not None and state.flush is not None:
            state.flush.cancel()
        async with self._membership(room):
            if room in self._joined and room not in self.rooms:
                assert self.channel is not None
                self._joined.discard(room)
                metrics.set_gauge("fanout_rooms", len(self._joined))
                await self.transport.leave(self.channel, room)

    @contextlib.asynccontextmanager
    async def _membership(self, room: str) -> AsyncIterator[None]:
        """Holds ``room``'s membership still while it is joined or left on the transport."""
        lock, users = self._room_locks.setdefault(room, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if not users[0]:
                del self._room_locks[room]

    async def _start(self) -> None:
        if self.channel is None:
            self.channel = await self.transport.open_hub()
        loop = asyncio.get_running_loop()
        for lane in range(self.transport.lanes):
            reader = self._readers.get(lane)
            if reader is None or reader.done():
                self._readers[lane] = loop.create_task(self._read(lane), name="fanout-reader")
        if self._renewer is None or self._renewer.done():
            self._renewer = loop.create_task(self._renew(), name="fanout-renew")

    async def _read(self, lane: int = 0) -> None:
        """Read ``lane`` of the transport (a shard of Redis, or all of it) and fan out."""
        assert self.channel is not None
        failures = 0
        stale = False  # the transport failed: memberships and queued events may be gone
        while True:
            delay = RETRY_SECONDS[min(failures, len(RETRY_SECONDS) - 1)]
            if stale:
                if not await self._rejoin(lane):
                    failures += 1
                    await asyncio.sleep(delay)
                    continue
                if not await self._catch_up(lane):  # a room's history could not be read
                    failures += 1
                    await asyncio.sleep(delay)
                    continue  # still stale: renew and catch up again, until every room is
                stale = False
            try:
                events = await self.transport.receive(self.channel, RECEIVE_EVENTS, lane)
            except asyncio.CancelledError:
                raise
            except Exception:
                failures += 1
                if not stale:
                    stale = True
                    self._held_up(lane)
                logger.exception("the transport failed; reading again in %.1f s", delay)
                await asyncio.sleep(delay)
                continue
            failures = 0
            for event in events:
                try:
                    self.dispatch(event)
                except Exception:
                    metrics.inc("messages_dropped", "fanout_error")
                    logger.exception("could not fan out an event of type %r", event.get("type"))

    def _held_up(self, lane: int) -> None:
        """Tell the sockets of ``lane``'s rooms that their messages are held up (once per
        failure of the lane): they get what they miss when it is back."""
        frame = Frame(
            error_frame(
                "room_unavailable",
                "the room's messages are held up: the gateway cannot reach the Redis that "
                "carries them; what is sent meanwhile arrives when it is back",
            )
        )
        for room in self._on_lane(self.rooms, lane):
            for subscriber in list(self.rooms.get(room, {}).values()):
                subscriber.deliver(frame, 0)
            metrics.inc("rooms_held_up")

    def _on_lane(self, rooms: Iterable[str], lane: int | None) -> list[str]:
        """Those of ``rooms`` whose events come on ``lane`` (all of them for None)."""
        if lane is None or self.transport.lanes == 1:
            return list(rooms)
        return [room for room in rooms if self.transport.lane_of(room) == lane]

    async def _catch_up(self, lane: int = 0) -> bool:
        """After a layer failure, send each room what history has past the last seq it got;
        whether every room's history could be read (if not, the reader tries again: what
        was sent already is not sent twice).

        Events queued for this process, or sent to a room while the hub was out of its group
        (a restarted Redis forgets memberships), are gone; history still has their messages.
        Those still queued (a promoted replica keeps the inboxes) repeat what this sent, and
        are dropped by id until the room's messages pass the last one sent here.
        """
        history = history_for()
        complete = True
        for room in self._on_lane(self.rooms, lane):
            members = self.rooms.get(room)
            if not members:
                continue
            last = self._delivered.get(room)
            if last is None:  # nothing fanned out yet: from the oldest welcome
                last = min((s.watermark for s in members.values()), default=0)
            try:
                missed = await history.missed(room, last)
            except Exception:
                logger.exception("could not read room %s's history to catch up yet", room)
                complete = False
                continue
            for envelope in missed.messages:
                self._message(envelope)
            if missed.messages:
                highest, ids = self._replayed.get(room, (0, set()))
                ids.update(envelope["id"] for envelope in missed.messages)
                self._replayed[room] = (max(highest, missed.messages[-1]["seq"]), ids)
        return complete

    def dispatch(self, event: Event) -> None:
        """Write ``event`` to the sockets of its room in this process."""
        kind = event["type"]
        if kind == ROOM_MESSAGES:
            for envelope in cast(MessagesEvent, event)["envelopes"]:
                self._message(envelope)
        elif kind == ROOM_PRESENCE:
            self._presence(cast(PresenceEvent, event))
        elif kind == ROOM_ERROR:
            self._error(cast(ErrorEvent, event))
        else:
            metrics.inc("messages_dropped", "unknown_event")
            logger.warning("fan-out got an event it does not know: %r", kind)

    def _message(self, envelope: Envelope) -> None:
        room = envelope["room"]
        members = self.rooms.get(room)
        if not members:
            return
        replayed = self._replayed.get(room)
        if replayed is not None:
            if envelope["id"] in replayed[1]:  # sent by the catch-up already
                metrics.inc("duplicates_removed")
                return
            if envelope.get("seq", 0) > replayed[0]:  # past what the catch-up sent
                del self._replayed[room]
        if not self._first_sight(room, envelope["id"]):
            metrics.inc("duplicates_removed")
            return
        frame = Frame.of(client_view(envelope))
        seq = envelope.get("seq", 0)
        if seq > self._delivered.get(room, 0):
            self._delivered[room] = seq
        for subscriber in list(members.values()):
            subscriber.deliver(frame, seq)
        entered = datetime.fromisoformat(envelope["ts"]).timestamp()
        metrics.observe("delivery_latency_seconds", max(0.0, time.time() - entered))
        metrics.inc("frames_fanned_out", amount=len(members))

    def _presence(self, event: PresenceEvent) -> None:
        room = event["room"]
        if not self.rooms.get(room):
            return
        state = self._presence_of.get(room)
        if state is None:
            state = self._presence_of[room] = _RoomPresence()
        if event["version"] > state.version:
            state.version, state.count = event["version"], event["count"]
        state.changed = True
        if state.count <= gateway_settings().presence_list_max:
            member = event["member"]
            state.changes[member["key"]] = (event["event"], member)
        else:
            state.changes.clear()  # the count alone goes out
        self._schedule_presence(room, state)

    def _schedule_presence(self, room: str, state: _RoomPresence) -> None:
        if state.flush is not None:
            return
        conf = gateway_settings()
        big = state.count > conf.presence_list_max
        interval = conf.presence_count_interval if big else conf.presence_interval
        state.flush = asyncio.get_running_loop().create_task(
            self._flush_presence(room, state, interval), name="presence-flush"
        )

    async def _flush_presence(self, room: str, state: _RoomPresence, interval: float) -> None:
        await asyncio.sleep(interval)
        state.flush = None
        try:
            await self._send_presence(room, state)
        except Exception:  # the room's next change sends again
            logger.exception("could not send room %s's presence", room)

    async def _send_presence(self, room: str, state: _RoomPresence) -> None:
        """Send the room's sockets what changed, or the list, or the count; see the module."""
        members = self.rooms.get(room)
        if not members:
            return
        changes, changed = state.changes, state.changed
        state.changes, state.changed = {}, False
        limit = gateway_settings().presence_list_max
        big = state.count > limit
        frame: dict[str, Any] = {"type": "presence", "count": state.count}
        if not big:
            frame["joined"] = [m for change, m in changes.values() if change == "join"]
            frame["left"] = [m for change, m in changes.values() if change == "leave"]
        delta = Frame.of(frame)
        whole: list[Subscriber] = []
        unread = False
        for subscriber in list(members.values()):
            if subscriber.presence_version is None:  # its welcome is being read: send it all
                subscriber.presence_reset = unread = True
            elif big:
                if changed or subscriber.presence_reset:
                    subscriber.deliver(delta, 0)
                subscriber.listed = subscriber.presence_reset = False
            elif subscriber.listed and not subscriber.presence_reset:
                # Its own join alone is in its welcome already.
                if changed and not (len(changes) == 1 and subscriber.key in changes):
                    subscriber.deliver(delta, 0)
            else:
                whole.append(subscriber)
        if whole:
            await self._send_whole(room, whole)
        if unread:
            self._schedule_presence(room, state)

    async def _send_whole(self, room: str, subscribers: list[Subscriber]) -> None:
        """Send ``subscribers`` the room's member list, or its count if it has grown too big."""
        limit = gateway_settings().presence_list_max
        listed, count, _ = await presence_for().snapshot(room, limit)
        frame: dict[str, Any] = {"type": "presence", "count": count}
        if listed is not None:
            frame["members"] = listed
        whole = Frame.of(frame)
        for subscriber in subscribers:
            subscriber.deliver(whole, 0)
            subscriber.listed = listed is not None
            subscriber.presence_reset = False

    def _error(self, event: ErrorEvent) -> None:
        subscriber = self.rooms.get(event["room"], {}).get(event.get("to", ""))
        if subscriber is None:
            return  # the socket has gone since it sent the message
        metrics.inc("ws_errors", event["code"])
        subscriber.deliver(Frame(error_frame(event["code"], event["detail"], id=event["id"])), 0)

    def _first_sight(self, room: str, message_id: str) -> bool:
        recent, ids = self._seen.setdefault(room, (deque(maxlen=DEDUPE_WINDOW), set()))
        if message_id in ids:
            return False
        if len(recent) == DEDUPE_WINDOW:
            ids.discard(recent[0])
        recent.append(message_id)
        ids.add(message_id)
        return True

    async def _rejoin(self, lane: int | None = None) -> bool:
        """Renew the hub's memberships (after ``lane`` failed, or all of them before they
        lapse); whether that worked.

        A room left while this runs may be renewed once more: the hub then gets its events
        for no socket until that membership lapses, and drops them."""
        assert self.channel is not None
        try:
            await self.transport.renew(self.channel, self._on_lane(self._joined, lane))
        except Exception:  # logged; the reader retries and renewal runs again later
            logger.warning("could not renew the hub's rooms yet", exc_info=True)
            return False
        return True

    async def _renew(self) -> None:
        lapse = float(getattr(settings, "CHANNEL_GROUP_EXPIRY", 86400))
        while True:
            await asyncio.sleep(max(1.0, lapse * RENEW_FRACTION))
            await self._rejoin()


def error_frame(code: str, detail: str, **extra: Any) -> str:
    """The frame that tells a socket what went wrong with something it sent."""
    return dumps({"type": "error", "code": code, "detail": detail, **extra})


def client_view(envelope: Envelope) -> dict[str, Any]:
    """The frame browsers get for a message: the envelope without the broker-side fields."""
    frame: dict[str, Any] = {"type": "message", **envelope}
    frame.pop("gateway", None)
    return frame


_hubs: dict[tuple[Any, Any, int], RoomHub] = {}


def hub_for() -> RoomHub:
    """This process's hub (one per event loop)."""
    return per_loop(_hubs, lambda: RoomHub(transport()))
