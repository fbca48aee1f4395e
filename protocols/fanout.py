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

A socket that stops reading is not allowed to grow the server's memory: once more than
`SEND_BACKLOG_BYTES` wait for it in the server it is closed with 1013 (try
again later), and the frames it missed are counted. Its client resumes from its last ``seq``.
"""

import asyncio
import logging
import time
from collections import deque
from datetime import datetime
from typing import Any, cast

from django.conf import settings

from gateway import metrics
from gateway.envelope import Envelope
from gateway.history import history_for
from gateway.jsonutil import dumps
from gateway.shared import per_loop
from gateway.transport import (
    ROOM_ERROR,
    ROOM_MESSAGES,
    ROOM_PRESENCE,
    ErrorEvent,
    Event,
    MessagesEvent,
    PresenceEvent,
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

    __slots__ = ("gone", "key", "outlet", "pending", "watermark")

    def __init__(self, key: str, outlet: Outlet) -> None:
        self.key = key  # its presence key: its own join is not announced to it
        self.outlet = outlet
        self.watermark = 0  # the seq of its welcome: older messages were in it
        self.pending: list[tuple[int, Frame]] | None = []  # until its welcome is out
        self.gone = False

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


class RoomHub:
    """This process's member of every room it has sockets for."""

    def __init__(self, rooms: Transport) -> None:
        self.transport = rooms
        self.channel: str | None = None  # the hub's id on the transport: its inbox
        self.rooms: dict[str, dict[str, Subscriber]] = {}
        self._joined: set[str] = set()  # rooms the hub is a member of on the transport
        self._membership = asyncio.Lock()
        self._seen: dict[str, tuple[deque[str], set[str]]] = {}
        self._delivered: dict[str, int] = {}  # room -> the highest seq fanned out
        self._reader: asyncio.Task[None] | None = None
        self._renewer: asyncio.Task[None] | None = None

    async def join(self, room: str, subscriber: Subscriber) -> None:
        """Add ``subscriber`` to ``room``; the room's messages reach it from now on."""
        self.rooms.setdefault(room, {})[subscriber.key] = subscriber
        if room in self._joined:
            return
        async with self._membership:
            await self._start()
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
        async with self._membership:
            if room in self._joined and room not in self.rooms:
                assert self.channel is not None
                self._joined.discard(room)
                metrics.set_gauge("fanout_rooms", len(self._joined))
                await self.transport.leave(self.channel, room)

    async def _start(self) -> None:
        if self.channel is None:
            self.channel = await self.transport.open_hub()
        loop = asyncio.get_running_loop()
        if self._reader is None or self._reader.done():
            self._reader = loop.create_task(self._read(), name="fanout-reader")
        if self._renewer is None or self._renewer.done():
            self._renewer = loop.create_task(self._renew(), name="fanout-renew")

    async def _read(self) -> None:
        assert self.channel is not None
        failures = 0
        stale = False  # the transport failed: memberships and queued events may be gone
        while True:
            delay = RETRY_SECONDS[min(failures, len(RETRY_SECONDS) - 1)]
            if stale:
                if not await self._rejoin():
                    failures += 1
                    await asyncio.sleep(delay)
                    continue
                stale = False
                await self._catch_up()
            try:
                events = await self.transport.receive(self.channel, RECEIVE_EVENTS)
            except asyncio.CancelledError:
                raise
            except Exception:
                failures += 1
                stale = True
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

    async def _catch_up(self) -> None:
        """After a layer failure, send each room what history has past the last seq it got.

        Events queued for this process, or sent to a room while the hub was out of its group
        (a restarted Redis forgets memberships), are gone; history still has their messages.
        """
        history = history_for()
        for room, members in list(self.rooms.items()):
            last = self._delivered.get(room)
            if last is None:  # nothing fanned out yet: from the oldest welcome
                last = min((s.watermark for s in members.values()), default=0)
            try:
                missed = await history.missed(room, last)
            except Exception:
                logger.exception("could not read room %s's history to catch up", room)
                continue
            for envelope in missed.messages:
                self._message(envelope)

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
        members = self.rooms.get(event["room"])
        if not members:
            return
        member = event["member"]
        frame = Frame.of({"type": "presence", "event": event["event"], "member": member})
        for subscriber in list(members.values()):
            if subscriber.key != member["key"]:  # its own join is in its welcome
                subscriber.deliver(frame, 0)

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

    async def _rejoin(self) -> bool:
        """Renew the hub's memberships (after the transport failed, or before they lapse);
        whether that worked."""
        async with self._membership:
            assert self.channel is not None
            try:
                await self.transport.renew(self.channel, list(self._joined))
            except Exception:  # logged; the reader retries and renewal runs again later
                logger.warning("could not renew the hub's rooms yet", exc_info=True)
                return False
        return True

    async def _renew(self) -> None:
        lapse = float(getattr(settings, "CHANNEL_GROUP_EXPIRY", 86400))
        while True:
            await asyncio.sleep(max(1.0, lapse * RENEW_FRACTION))
            await self._rejoin()


def error_frame(code: str, detail: str, **extra: str) -> str:
    """The frame that tells a socket what went wrong with something it sent."""
    return dumps({"type": "error", "code": code, "detail": detail, **extra})


def client_view(envelope: Envelope) -> dict[str, Any]:
    """The frame browsers get for a message: the envelope without the broker-side fields."""
    frame: dict[str, Any] = {"type": "message", **envelope}
    frame.pop("gateway", None)
    return frame


_hubs: dict[tuple[str | None, int], RoomHub] = {}


def hub_for() -> RoomHub:
    """This process's hub (one per event loop)."""
    return per_loop(_hubs, lambda: RoomHub(transport()))
