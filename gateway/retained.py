"""Room state from retained device messages: the last retained value per room and topic.

A browser that joins a room gets these first, marked ``"retained": true``; browsers already in
the room saw them live.
"""

from typing import cast

from channels.db import database_sync_to_async

from gateway.envelope import Envelope
from gateway.models import RetainedState


def _remember(envelope: Envelope) -> None:
    state = Envelope(**envelope)
    state["retained"] = True
    RetainedState.objects.update_or_create(
        room=envelope["room"], topic=envelope["topic"] or "", defaults={"envelope": state}
    )


def _forget(room: str, topic: str) -> None:
    RetainedState.objects.filter(room=room, topic=topic).delete()


def _states(room: str) -> list[Envelope]:
    rows = RetainedState.objects.filter(room=room).order_by("updated_at", "topic")
    return [cast(Envelope, row.envelope) for row in rows]


async def remember(envelope: Envelope) -> None:
    """Keep ``envelope`` as its room and topic's state."""
    await database_sync_to_async(_remember)(envelope)


async def forget(room: str, topic: str) -> None:
    """Drop a room and topic's state (a device cleared its retained message)."""
    await database_sync_to_async(_forget)(room, topic)


async def states(room: str) -> list[Envelope]:
    """The room's states, oldest first."""
    return cast(list[Envelope], await database_sync_to_async(_states)(room))
