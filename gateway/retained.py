"""Room state from retained device messages: the last retained value per room and topic.

A browser that joins a room gets these first, marked ``"retained": true``; browsers already in
the room saw them live. A room keeps states for at most ``RETAINED_MAX_TOPICS`` topics, so a
device that retains on ever new topics cannot grow every welcome without bound: past the limit a
new topic's message is still delivered, but not kept.
"""

from typing import cast

from channels.db import database_sync_to_async

from gateway.conf import gateway_settings
from gateway.envelope import Envelope
from gateway.models import RetainedState


def _remember(envelope: Envelope, limit: int) -> bool:
    state = Envelope(**envelope)
    state["retained"] = True
    room, topic = envelope["room"], envelope["topic"] or ""
    in_room = RetainedState.objects.filter(room=room)
    if not in_room.filter(topic=topic).exists() and in_room.count() >= limit:
        return False
    RetainedState.objects.update_or_create(room=room, topic=topic, defaults={"envelope": state})
    return True


def _forget(room: str, topic: str) -> None:
    RetainedState.objects.filter(room=room, topic=topic).delete()


def _states(room: str) -> list[Envelope]:
    rows = RetainedState.objects.filter(room=room).order_by("updated_at", "topic")
    return [cast(Envelope, row.envelope) for row in rows]


async def remember(envelope: Envelope) -> bool:
    """Keep ``envelope`` as its room and topic's state; False when the room has no room left."""
    limit = gateway_settings().retained_max_topics
    kept: bool = await database_sync_to_async(_remember)(envelope, limit)
    return kept


async def forget(room: str, topic: str) -> None:
    """Drop a room and topic's state (a device cleared its retained message)."""
    await database_sync_to_async(_forget)(room, topic)


async def states(room: str) -> list[Envelope]:
    """The room's states, oldest first."""
    return cast(list[Envelope], await database_sync_to_async(_states)(room))
