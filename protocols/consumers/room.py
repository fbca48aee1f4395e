"""The room socket: ``ws://HOST/ws/rooms/<room>/``.

Clients send the Channels tutorial's frame, ``{"message": <any JSON>}``, and receive every
message of the room as an envelope frame. Bad frames get an error frame and the socket stays
open; a frame over the size limit closes the socket with 1009.
"""

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Hashable
from functools import partial
from typing import Any
from urllib.parse import parse_qs

from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.db import DatabaseError
from redis.exceptions import RedisError

from gateway import metrics, retained, stamps
from gateway.access import Access, aaccess_cached, can_read, can_write
from gateway.access import is_known as _is_known
from gateway.conf import gateway_settings
from gateway.dispatch import DirectDispatchMixin
from gateway.envelope import Envelope
from gateway.errors import GatewayError
from gateway.history import history_for, parse_since
from gateway.jsonutil import dumps, dumps_bytes
from gateway.presence import presence_for
from gateway.publish import publish
from gateway.ratelimit import FloodGuard
from gateway.room_registry import may_open
from gateway.rooms import is_valid_room
from gateway.tokens import atoken_is_active
from protocols.access_watch import access_watch
from protocols.admission import admission_of
from protocols.auth import asession_is_current
from protocols.client_address import client_address
from protocols.fanout import Subscriber, client_view, error_frame, hub_for
from protocols.frames import PRESENCE_LIST, Refusal, read_frame
from protocols.outlets import SEND_BACKLOG_BYTES, Frame, outlet_for

logger = logging.getLogger(__name__)

CLOSE_POLICY = 1008  # flooding, too many sockets
CLOSE_TRY_LATER = 1013  # the Redis (shard) that carries the room cannot be reached
CLOSE_UNAUTHORISED = 4401  # an invalid or revoked token, an ended session
CLOSE_FORBIDDEN = 4403  # no read access to the room, at connect or since
WELCOME_MESSAGES = 50  # recent messages in the welcome of a browser that joins afresh
# The scope's keys an open socket keeps: its credentials, and where it came from, for logs.
SCOPE_KEPT = ("type", "path", "client", "user", "session", "api_token_id")


class RoomConsumer(DirectDispatchMixin, AsyncWebsocketConsumer):  # type: ignore[misc]
    """One browser (or program) in one room.

    The room's messages, its presence and the errors of its own sends reach the socket through
    this process's fan-out hub (`protocols.fanout`). The socket has no channel of its own: that
    would cost a receive task, a queue and a channel-layer read per socket, and a channel-layer
    failure would end the socket instead of the hub retrying.
    """

    channel_layer_alias = None  # no channel of its own

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # All of a socket's attributes, set now (see `DirectDispatchMixin.__init__`).
        self.key = f"ws:{secrets.token_hex(12)}"  # its presence key, unique across processes
        self.room: str | None = None
        self.sender = ""
        self.subscriber: Subscriber | None = None
        self._access: Access = "none"
        self._access_checked = 0.0
        self._states_stamp: stamps.Stamp = None
        self._claimed: tuple[str, ...] = ()
        self._closing = False
        self._flood: FloodGuard | None = None  # made by the first frame the client sends

    async def connect(self) -> None:
        welcomed = False
        try:
            welcomed = await self._join(self.scope["url_route"]["kwargs"]["room"])
        finally:  # the handshake is over: its place is free for the next
            admission_of(self.scope).done(welcomed=welcomed)
            # What the socket reads of its scope from now on; the rest (its request headers
            # above all: a few hundred bytes to a few KB) would be kept for nothing.
            self.scope = {key: self.scope[key] for key in SCOPE_KEPT if key in self.scope}

    async def _join(self, room: str) -> bool:
        """Join ``room`` and send the welcome; False when the socket was refused instead."""
        if not is_valid_room(room):
            metrics.inc("ws_refused", "invalid_room")
            await self.close()  # before accept(): the handshake is refused with 403
            return False
        refusal = await self._refusal(room)
        if refusal is not None:
            code, error, detail = refusal
            metrics.inc("ws_refused", error)
            await self._refuse(error, detail, code)
            return False
        since, since_error = _since(self.scope.get("query_string", b""))
        self.room = room
        self.sender = self._sender_name()
        # Join before reading history: a message is in the history before it is sent to the
        # room, so every message is either in the welcome or arrives after it (held until the
        # welcome is out).
        self.subscriber = Subscriber(self.key, outlet_for(self.base_send))
        try:
            await hub_for().join(room, self.subscriber)
        except RedisError as exc:
            await hub_for().leave(room, self.subscriber)
            self.subscriber = None
            metrics.inc("ws_refused", "room_unavailable")
            await self._refuse("room_unavailable", _unreachable(room, exc), CLOSE_TRY_LATER)
            return False
        await self.accept(self.scope.get("token_subprotocol"))
        metrics.add_gauge("ws_connections", 1)
        try:
            await presence_for().join(room, self.key, "browser", self.sender, hold=True)
            if since_error:
                await self.send_error("invalid_since", since_error)
            await self._welcome(room, since)
        except RedisError as exc:
            detail = _unreachable(room, exc)
            await self._close_with("room_unavailable", detail, CLOSE_TRY_LATER, "room_unavailable")
            return False
        access_watch.add(self)
        return True

    async def _refuse(self, error: str, detail: str, code: int) -> None:
        """Accepted only to say why: a close code needs an open socket. No room joined."""
        await self.accept(self.scope.get("token_subprotocol"))
        await self.send_error(error, detail)
        await self.close(code=code)

    async def _welcome(self, room: str, since: int | None) -> None:
        # Three reads, side by side: each only has to come after the hub joined the room.
        (messages, gap), stored_states, (listed, count, version) = await asyncio.gather(
            _messages(room, since),
            retained.states(room, self._states_stamp),
            presence_for().snapshot(room, gateway_settings().presence_list_max),
        )
        # Every seq up to the highest one read was in the history when it was read (seq and
        # window are written together), so live copies of those are in the welcome already.
        watermark = max((m.get("seq", 0) for m in messages), default=since or 0)
        states = [client_view(s) for s in stored_states]
        subscriber = self.subscriber
        assert subscriber is not None
        # Presence changes from this version on reach the socket through the hub.
        subscriber.presence_version, subscriber.listed = version, listed is not None
        frame = welcome_frame(
            room,
            seq=watermark,
            gap=gap,
            messages=[client_view(m) for m in messages],
            states=states,
            presence=listed or [],
            presence_count=count,
        )
        subscriber.welcome(Frame(frame), watermark)

    async def _refusal(self, room: str) -> tuple[int, str, str] | None:
        """Why this socket may not join ``room`` (close code, error code, detail), if so."""
        token_error = self.scope.get("token_error")
        if token_error:
            return CLOSE_UNAUTHORISED, "unauthorised", token_error
        # Counted before any database work: a flood of sockets is refused cheaply.
        for key, limit in self._socket_limits():
            if not _open_sockets.claim(key, limit):
                self._release_claims()
                return CLOSE_POLICY, "too_many_sockets", "close some of your other sockets first"
            self._claimed += (key,)
        # Read together: the access stamp now, the room's state stamp for the welcome.
        access_stamp, self._states_stamp = await stamps.read_many(
            stamps.ACCESS, stamps.retained_stamp(room)
        )
        self._access = await aaccess_cached(self.scope.get("user"), room, access_stamp)
        self._access_checked = time.monotonic()
        if not can_read(self._access):
            self._release_claims()  # a refused socket keeps nothing
            return CLOSE_FORBIDDEN, "forbidden", f"you may not enter room {room}"
        if not await may_open(room):
            self._release_claims()
            detail = f"this gateway holds its maximum of rooms: join an existing room, not {room}"
            return CLOSE_POLICY, "too_many_rooms", detail
        return None

    def _socket_limits(self) -> list[tuple[str, int]]:
        """The counts this socket takes a place in, and their limits (per process)."""
        user = self.scope.get("user")
        if user is not None and user.is_authenticated:
            return [(f"user:{user.pk}", settings.WS_MAX_PER_USER)]
        address = client_address(self.scope, settings.TRUSTED_PROXIES)
        return [
            (f"address:{address}", settings.WS_MAX_ANONYMOUS_PER_ADDRESS),
            ("anonymous:", settings.WS_MAX_ANONYMOUS),
        ]

    def _release_claims(self) -> None:
        for key in self._claimed:
            _open_sockets.release(key)
        self._claimed = ()

    async def disconnect(self, code: int) -> None:
        self._closing = True
        access_watch.discard(self)
        self._release_claims()
        if self.subscriber is not None and self.room is not None:
            metrics.add_gauge("ws_connections", -1)
            await hub_for().leave(self.room, self.subscriber)
            await presence_for().leave(self.room, self.key)

    def _credentials(self) -> tuple[Hashable, Callable[[], Awaitable[bool]], str] | None:
        """How to tell that the socket's credentials still hold (keyed for sharing the
        answer), and what to say when not."""
        token_id = self.scope.get("api_token_id")
        if token_id is not None:
            check = partial(atoken_is_active, token_id)
            return ("token", token_id), check, "your token was revoked"
        user, session = self.scope.get("user"), self.scope.get("session")
        if user is not None and user.is_authenticated and session is not None:
            key = session.session_key
            if key:
                check = partial(asession_is_current, key, user.pk)
                return ("session", key, user.pk), check, "your session has ended"
        return None

    async def recheck(self, answers: dict[Hashable, Any]) -> None:
        """Close the socket once its credentials no longer hold (4401) or it may no longer
        read the room (4403); called every ``ACCESS_RECHECK_SECONDS`` by `access_watch`,
        with the answers of this round so far."""
        if self._closing or self.room is None:
            return
        credentials = self._credentials()
        if credentials is not None:
            key, check, why = credentials
            if key not in answers:
                answers[key] = await check()
            if not answers[key]:
                await self._close_with(
                    "unauthorised", why, CLOSE_UNAUTHORISED, "credentials_revoked"
                )
                return
        user = self.scope.get("user")
        key = ("access", getattr(user, "pk", None) if _is_known(user) else None, self.room)
        if key not in answers:
            answers[key] = await aaccess_cached(user, self.room, await stamps.read(stamps.ACCESS))
        self._access, self._access_checked = answers[key], time.monotonic()
        if not can_read(self._access):
            await self._access_revoked()

    async def _check_access(self) -> None:
        assert self.room is not None
        stamp = await stamps.read(stamps.ACCESS)
        self._access = await aaccess_cached(self.scope.get("user"), self.room, stamp)
        self._access_checked = time.monotonic()

    async def _access_revoked(self) -> None:
        assert self.room is not None
        detail = f"you may no longer enter room {self.room}"
        await self._close_with("forbidden", detail, CLOSE_FORBIDDEN, "access_revoked")

    async def _close_with(self, error: str, detail: str, code: int, reason: str) -> None:
        """Say why in an error frame, then close with ``code`` (once, whoever asks first)."""
        if self._closing:
            return
        self._closing = True
        metrics.inc("ws_closed", reason)
        await self.send_error(error, detail)
        await self.close(code=code)

    async def _may_write(self) -> bool:
        """Write access to the room, as the watcher last found it (or found now, if that was
        longer than ``ACCESS_RECHECK_SECONDS`` ago)."""
        if time.monotonic() - self._access_checked > settings.ACCESS_RECHECK_SECONDS:
            await self._check_access()
        return can_write(self._access)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self._closing:  # refused already: frames that were on their way go nowhere
            return
        if not await self._within_rate():
            return
        frame = await self._frame(text_data)
        if frame is None:
            return
        if frame.get("type") == PRESENCE_LIST:
            await self._list_presence(frame["cursor"], frame["limit"])
            return
        if not await self._may_write():
            if not can_read(self._access):
                await self._access_revoked()
            else:
                await self.send_error("forbidden", "you may read this room but not write to it")
            return
        assert self.room is not None
        try:
            await publish(
                self.room,
                frame["message"],
                source="ws",
                sender=self.sender,
                reply_channel=hub_for().channel,
                reply_to=self.key,
            )
        except GatewayError as exc:
            await self.send_error(exc.code, str(exc))
        except (RedisError, DatabaseError) as exc:  # full, or away: the sender may try again
            metrics.dropped("store_unavailable", f"room {self.room}: {type(exc).__name__}: {exc}")
            await self.send_error("unavailable", "the gateway cannot keep messages now; try again")

    async def _list_presence(self, cursor: str, limit: int) -> None:
        """Answer a request for a page of the room's member list."""
        assert self.room is not None
        try:
            members, following, count = await presence_for().page(self.room, cursor, limit)
        except RedisError as exc:
            logger.warning("room %s's member list unavailable: %s", self.room, exc)
            await self.send_error("unavailable", "the member list cannot be read now; try again")
            return
        answer = {"type": PRESENCE_LIST, "members": members, "cursor": following, "count": count}
        await self.send(text_data=dumps(answer))

    async def _within_rate(self) -> bool:
        """Count the frame against the rate limit: warn, then close a client that floods."""
        if self._flood is None:
            self._flood = FloodGuard.for_websocket()
        verdict = self._flood.check()
        if verdict == "close":
            metrics.inc("ws_closed", "flood")
            await self.close(code=CLOSE_POLICY)
        elif verdict == "warn":
            await self.send_error("rate_limited", "too many frames: slow down or be closed")
        return verdict == "ok"

    async def _frame(self, text_data: str | None) -> dict[str, Any] | None:
        """The client's frame, or None once the problem with it has been answered."""
        frame = read_frame(text_data, gateway_settings().max_frame_bytes)
        if not isinstance(frame, Refusal):
            return frame
        if frame.close is not None:
            metrics.inc("ws_closed", frame.code)
            await self.close(code=frame.close)
        else:
            await self.send_error(frame.code, frame.detail)
        return None

    async def send_error(self, code: str, detail: str, **extra: str) -> None:
        """Answer a bad frame (or report a failed delivery) without closing the socket."""
        metrics.inc("ws_errors", code)
        await self.send(text_data=error_frame(code, detail, **extra))

    def _sender_name(self) -> str:
        user = self.scope.get("user")
        if user is not None and user.is_authenticated:
            return str(user.get_username())
        return f"guest-{secrets.token_hex(3)}"


async def _messages(room: str, since: int | None) -> tuple[list[Envelope], bool]:
    """A welcome's messages, and whether some were missed for good: the last ones for a
    socket that joins afresh, those after ``since`` for one that resumes."""
    history = history_for()
    if since is None:
        return await history.recent(room, WELCOME_MESSAGES), False
    missed = await history.missed(room, since)
    return missed.messages, missed.gap


def _unreachable(room: str, exc: RedisError) -> str:
    logger.warning("room %s is unreachable: %s: %s", room, type(exc).__name__, exc)
    return f"room {room} cannot be reached now (its Redis is away); try again shortly"


def _since(query_string: bytes) -> tuple[int | None, str | None]:
    """The ``since`` query parameter (the last ``seq`` a client saw), or why it is unusable."""
    values = parse_qs(query_string.decode("latin-1")).get("since")
    if not values:
        return None, None
    try:
        return parse_since(values[-1]), None
    except ValueError as exc:
        return None, str(exc)


class _SocketCounter:
    """Open sockets per key (a user, an address, all anonymous ones) in this process."""

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}

    def claim(self, key: str, limit: int) -> bool:
        if self._counts.get(key, 0) >= limit:
            return False
        self._counts[key] = self._counts.get(key, 0) + 1
        return True

    def release(self, key: str) -> None:
        left = self._counts.get(key, 1) - 1
        if left > 0:
            self._counts[key] = left
        else:
            self._counts.pop(key, None)


_open_sockets = _SocketCounter()


class RefuseConsumer(DirectDispatchMixin, AsyncWebsocketConsumer):  # type: ignore[misc]
    """Any other WebSocket path: refused before accept."""

    channel_layer_alias = None

    async def connect(self) -> None:
        admission_of(self.scope).done(welcomed=False)
        metrics.inc("ws_refused", "unknown_path")
        await self.close()


# The welcome's bytes at most: what a socket may leave unread in the server.
WELCOME_MAX_BYTES = SEND_BACKLOG_BYTES


def welcome_frame(
    room: str,
    *,
    seq: int,
    gap: bool,
    messages: list[dict[str, Any]],
    states: list[dict[str, Any]],
    presence: list[Any],
    presence_count: int | None = None,
    limit: int = WELCOME_MAX_BYTES,
) -> str:
    """The welcome, within ``limit`` bytes: what does not fit is left out, the oldest messages
    first (``gap`` then says so: the HTTP API pages through them), then the states least
    recently updated (``retained_gap``)."""
    frame: dict[str, Any] = {
        "type": "welcome",
        "room": room,
        "seq": seq,
        "gap": gap,
        "messages": messages,
        "retained": states,
        "presence": presence,
        "presence_count": len(presence) if presence_count is None else presence_count,
    }
    text = dumps(frame)
    if len(text) <= limit // 4 or len(text.encode()) <= limit:  # most welcomes: one encoding
        return text
    budget = limit - len(dumps_bytes({**frame, "messages": [], "retained": []})) - 64
    kept_states = _newest_within(states, budget, key="ts")
    budget -= sum(len(dumps_bytes(item)) + 1 for item in kept_states)
    kept_messages = _newest_within(messages, budget, key="seq")
    frame["messages"] = kept_messages
    frame["retained"] = kept_states
    frame["gap"] = gap or len(kept_messages) < len(messages)
    if len(kept_states) < len(states):
        frame["retained_gap"] = True
    return dumps(frame)


def _newest_within(items: list[dict[str, Any]], budget: int, *, key: str) -> list[dict[str, Any]]:
    """The newest of ``items`` (by ``key``) whose JSON fits ``budget`` bytes, in their order."""
    chosen: set[int] = set()
    for index in sorted(range(len(items)), key=lambda i: items[i].get(key) or 0, reverse=True):
        size = len(dumps_bytes(items[index])) + 1
        if size > budget:
            break
        budget -= size
        chosen.add(index)
    return [item for index, item in enumerate(items) if index in chosen]
