"""Room state from retained device messages: the last retained value per room and topic.

A browser that joins a room gets these first, marked ``"retained": true``; browsers already in
the room saw them live. A room keeps states for at most ``RETAINED_MAX_TOPICS`` topics, so a
device that retains on ever new topics cannot grow every welcome without bound: past the limit a
new topic's message is still delivered, but not kept.
"""

import logging
from functools import partial
from typing import cast

from channels.db import database_sync_to_async
from redis.exceptions import RedisError

from gateway import stamps
from gateway.conf import gateway_settings
from gateway.envelope import Envelope
from gateway.jsonutil import dumps
from gateway.models import RetainedState

logger = logging.getLogger(__name__)


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


def _states(room: str) -> tuple[list[Envelope], int]:
    """The room's states, oldest first, and the bytes they hold as JSON."""
    rows = RetainedState.objects.filter(room=room).order_by("updated_at", "topic")
    found = [cast(Envelope, row.envelope) for row in rows]
    return found, sum(len(dumps(e)) for e in found)


# A room's states as this process last read them, while the room's stamp stands: a burst of
# sockets into one room reads them once. At most 8 MiB of them, and none older than 10 s.
_kept: "stamps.Stamped[list[Envelope]]" = stamps.Stamped(
    max_entries=1_000, max_age=10.0, max_cost=8 << 20
)


async def remember(envelope: Envelope) -> bool:
    """Keep ``envelope`` as its room and topic's state; False when the room has no room left."""
    limit = gateway_settings().retained_max_topics
    kept: bool = await database_sync_to_async(_remember)(envelope, limit)
    if kept:
        await _moved(envelope["room"])
    return kept


async def forget(room: str, topic: str) -> None:
    """Drop a room and topic's state (a device cleared its retained message)."""
    await database_sync_to_async(_forget)(room, topic)
    await _moved(room)


async def _moved(room: str) -> None:
    """Tell the processes that the room's states changed (they are committed already): if
    the main Redis cannot be reached, what they cached expires on its own within 10 s, and a
    room on another shard must not wait for it."""
    try:
        await stamps.bump(stamps.retained_stamp(room))
    except RedisError as exc:
        logger.warning(
            "room %s's states changed; other processes see it within 10 s (%s)", room, exc
        )


async def states(room: str, stamp: stamps.Stamp) -> list[Envelope]:
    """The room's states, oldest first (shared: copy one before changing it); ``stamp``: the
    room's `stamps.retained_stamp`, read before now (however long before)."""
    return await _kept.answer(room, stamp, partial(database_sync_to_async(_states), room))
