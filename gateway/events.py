"""Channel-layer events, typed so that a misspelt key is a type error rather than a lost message.

Every event the gateway sends has a fixed ``type`` chosen here; nothing a client sends is ever
copied into ``type`` (a worker exits on an event without one, and a forged one would call an
arbitrary handler).
"""

from typing import Literal, NotRequired, TypedDict

from gateway.envelope import Envelope

ROOM_MESSAGES: Literal["room.messages"] = "room.messages"
MQTT_PUBLISH: Literal["mqtt.publish"] = "mqtt.publish"
ROOM_ERROR: Literal["room.error"] = "room.error"

# The channel the MQTT bridge worker (``runworker mqtt-bridge``) reads.
BRIDGE_CHANNEL = "mqtt-bridge"


class RoomMessagesEvent(TypedDict):
    """Messages that entered together, each room's in ``seq`` order.

    Sent to a room's group, or, when a burst spans rooms, once to each process's fan-out hub
    with the messages of every room it serves; the hub writes each to its sockets in its room.
    """

    type: Literal["room.messages"]
    envelopes: list[Envelope]


class MqttPublishEvent(TypedDict):
    """Sent to `BRIDGE_CHANNEL`; the bridge publishes the envelope to the room's topic."""

    type: Literal["mqtt.publish"]
    envelope: Envelope
    reply_channel: NotRequired[str]  # told if the message cannot reach the broker
    reply_to: NotRequired[str]  # which of the reply channel's sockets sent it


class RoomErrorEvent(TypedDict):
    """Sent to a sender's reply channel: something it sent could not be delivered.

    A browser's reply channel is its process's fan-out hub, and ``to`` names the socket
    among the hub's sockets in ``room``.
    """

    type: Literal["room.error"]
    code: str
    detail: str
    id: str
    room: str
    to: NotRequired[str]


def room_error(envelope: Envelope, code: str, detail: str, to: str | None) -> RoomErrorEvent:
    """The event that tells ``to`` (a socket, when the reply channel is a hub's) that
    ``envelope`` could not be delivered."""
    event = RoomErrorEvent(
        type=ROOM_ERROR, code=code, detail=detail, id=envelope["id"], room=envelope["room"]
    )
    if to:
        event["to"] = to
    return event
