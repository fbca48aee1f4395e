"""The one path every message takes into a room, whatever edge it came from.

`publish` validates the room, stamps the envelope (id, time, gateway), records the room, sends
the envelope to the room's group and, unless it came from MQTT, to the bridge worker. Messages
from MQTT are never sent back to the bridge: that is the first half of loop prevention (the
bridge ignores its own publications for the second).
"""

import json
import logging
from typing import Any

from channels.db import database_sync_to_async
from channels.exceptions import ChannelFull
from channels.layers import BaseChannelLayer, get_channel_layer

from gateway import metrics, retained
from gateway.conf import gateway_settings
from gateway.envelope import Envelope, Source, new_envelope
from gateway.errors import InvalidMessageError
from gateway.events import (
    BRIDGE_CHANNEL,
    MQTT_PUBLISH,
    ROOM_ERROR,
    ROOM_MESSAGE,
    MqttPublishEvent,
    RoomErrorEvent,
    RoomMessageEvent,
)
from gateway.history import history_for
from gateway.models import Room
from gateway.rooms import group_name, validate_room

logger = logging.getLogger(__name__)

# Rooms this process has already recorded, so the database is touched once per room.
_known_rooms: set[str] = set()


async def publish(
    room: str,
    message: Any,
    *,
    source: Source,
    sender: str | None,
    topic: str | None = None,
    base64: bool = False,
    message_id: str | None = None,
    state: bool = False,
    live: bool = True,
    reply_channel: str | None = None,
    layer: BaseChannelLayer | None = None,
) -> Envelope:
    """Put ``message`` into ``room`` and return the envelope it travels in.

    Args:
        message_id: the envelope's id; a redelivered message must keep the id of its first
            delivery so that browsers can drop the copy. Fresh when None.
        state: keep the message as the room's state for its topic (a retained message).
        live: send it to the browsers in the room now (False for state learnt at start-up).
        reply_channel: the sender's channel, told if the message cannot reach the broker.

    Raises:
        InvalidRoomError: the room name breaks the rules.
        InvalidMessageError: the message is not JSON-serialisable.
    """
    validate_room(room)
    try:
        json.dumps(message)
    except (TypeError, ValueError) as exc:
        raise InvalidMessageError(f"message is not JSON-serialisable: {exc}") from exc
    layer = layer or get_channel_layer()
    if layer is None:
        raise InvalidMessageError("no channel layer is configured")
    envelope = new_envelope(
        room=room,
        message=message,
        source=source,
        sender=sender,
        topic=topic,
        base64=base64,
        message_id=message_id,
        gateway=gateway_settings().gateway_id,
    )
    await _record_room(room)
    if live:
        await history_for(layer).append(envelope)  # before the room sees it: see history.py
    if state:
        await retained.remember(envelope)
    if not live:
        return envelope
    await layer.group_send(group_name(room), RoomMessageEvent(type=ROOM_MESSAGE, envelope=envelope))
    if source != "mqtt":
        event = MqttPublishEvent(type=MQTT_PUBLISH, envelope=envelope)
        if reply_channel:
            event["reply_channel"] = reply_channel
        try:
            await layer.send(BRIDGE_CHANNEL, event)
        except ChannelFull:
            detail = "the MQTT bridge is not keeping up (or not running); not sent to devices"
            metrics.dropped("bridge_channel_full", f"room {room}: {detail}")
            if reply_channel:
                await layer.send(
                    reply_channel,
                    RoomErrorEvent(
                        type=ROOM_ERROR, code="bridge_unavailable", detail=detail, id=envelope["id"]
                    ),
                )
    metrics.inc("messages_published", source)
    return envelope


async def _record_room(room: str) -> None:
    if room in _known_rooms:
        return
    await database_sync_to_async(Room.objects.get_or_create)(name=room)
    _known_rooms.add(room)
