"""Topic <-> room rules of the default bridge (pure, no I/O).

A device publishes to ``rooms/<room>`` or ``rooms/<room>/<anything>``; the first level after the
room names the sender. Messages entering a room from elsewhere go out on ``rooms/<room>/gateway``.
"""

from dataclasses import dataclass

from gateway.rooms import is_valid_room

TOPIC_PREFIX = "rooms"
INBOUND_FILTER = f"{TOPIC_PREFIX}/#"
OUTBOUND_LEVEL = "gateway"


@dataclass(frozen=True, slots=True)
class Route:
    """Where an inbound topic leads: the room and the sender (None for ``rooms/<room>``)."""

    room: str
    sender: str | None


def route_inbound(topic: str) -> Route | None:
    """The room a device topic feeds, or None when the topic names no valid room."""
    levels = topic.split("/")
    if len(levels) < 2 or levels[0] != TOPIC_PREFIX or not is_valid_room(levels[1]):
        return None
    sender = levels[2] if len(levels) > 2 and levels[2] else None
    return Route(room=levels[1], sender=sender)


def outbound_topic(room: str) -> str:
    """The topic a room's messages are published to (``rooms/<room>/gateway``)."""
    return f"{TOPIC_PREFIX}/{room}/{OUTBOUND_LEVEL}"
