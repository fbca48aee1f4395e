"""The room socket: ``ws://HOST/ws/rooms/<room>/``.

Clients send the Channels tutorial's frame, ``{"message": <any JSON>}``, and receive every
message of the room as an envelope frame. Bad frames get an error frame and the socket stays
open; a frame over the size limit closes the socket with 1009.
"""

import logging
import secrets
from collections import deque
from typing import Any

from channels.generic.websocket import AsyncWebsocketConsumer

from gateway import metrics, retained
from gateway.conf import gateway_settings
from gateway.dispatch import DirectDispatchMixin
from gateway.envelope import Envelope
from gateway.errors import GatewayError
from gateway.events import RoomErrorEvent, RoomMessageEvent
from gateway.jsonutil import dumps, parse_json
from gateway.publish import publish
from gateway.rooms import group_name, is_valid_room

logger = logging.getLogger(__name__)

CLOSE_TOO_BIG = 1009
# How many recent message ids a socket remembers to drop redelivered copies. A copy arrives
# right after a bridge restart, ahead of newer messages, so a short window is enough.
DEDUPE_WINDOW = 256


class RoomConsumer(DirectDispatchMixin, AsyncWebsocketConsumer):  # type: ignore[misc]
    """One browser (or program) in one room."""

    room: str | None = None
    group: str | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._recent: deque[str] = deque(maxlen=DEDUPE_WINDOW)
        self._recent_set: set[str] = set()

    async def connect(self) -> None:
        room = self.scope["url_route"]["kwargs"]["room"]
        if not is_valid_room(room):
            metrics.inc("ws_refused", "invalid_room")
            await self.close()  # before accept(): the handshake is refused with 403
            return
        self.room, self.group = room, group_name(room)
        self.sender = self._sender_name()
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        for state in await retained.states(room):
            await self._forward(state)

    async def disconnect(self, code: int) -> None:
        if self.group is not None:
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if text_data is None:
            await self.send_error("binary_frame", "frames must be JSON text, not binary")
            return
        limit = gateway_settings().max_frame_bytes
        if len(text_data) > limit or len(text_data.encode("utf-8")) > limit:
            metrics.inc("ws_closed", "frame_too_big")
            await self.close(code=CLOSE_TOO_BIG)
            return
        try:
            frame = parse_json(text_data)
        except ValueError as exc:
            await self.send_error("invalid_json", f"frames must be JSON: {exc}")
            return
        if not isinstance(frame, dict) or "message" not in frame:
            await self.send_error("invalid_frame", 'send {"message": <any JSON value>}')
            return
        assert self.room is not None
        try:
            await publish(
                self.room,
                frame["message"],
                source="ws",
                sender=self.sender,
                reply_channel=self.channel_name,
            )
        except GatewayError as exc:
            await self.send_error(exc.code, str(exc))

    async def room_message(self, event: RoomMessageEvent) -> None:
        """A message in the room: forward it to this socket, once."""
        await self._forward(event["envelope"])

    async def room_error(self, event: RoomErrorEvent) -> None:
        """A message this socket sent could not be delivered to the broker."""
        await self.send_error(event["code"], event["detail"], id=event["id"])

    async def _forward(self, envelope: Envelope) -> None:
        message_id = envelope["id"]
        if message_id in self._recent_set:
            metrics.inc("duplicates_removed")
            return
        if len(self._recent) == DEDUPE_WINDOW:
            self._recent_set.discard(self._recent[0])
        self._recent.append(message_id)
        self._recent_set.add(message_id)
        frame: dict[str, Any] = {"type": "message"}
        frame.update((k, v) for k, v in envelope.items() if k != "gateway")
        await self.send(text_data=dumps(frame))

    async def send_error(self, code: str, detail: str, **extra: str) -> None:
        """Answer a bad frame (or report a failed delivery) without closing the socket."""
        metrics.inc("ws_errors", code)
        await self.send(text_data=dumps({"type": "error", "code": code, "detail": detail, **extra}))

    def _sender_name(self) -> str:
        user = self.scope.get("user")
        if user is not None and user.is_authenticated:
            return str(user.get_username())
        return f"guest-{secrets.token_hex(3)}"


class RefuseConsumer(AsyncWebsocketConsumer):  # type: ignore[misc]
    """Any other WebSocket path: refused before accept."""

    async def connect(self) -> None:
        metrics.inc("ws_refused", "unknown_path")
        await self.close()
