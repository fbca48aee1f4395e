"""Rooms the gateway knows: recorded on first use, capped in number, forgotten when idle.

Rooms come into being by use: the first message into a name records it. A gateway holds at
most ``GATEWAY_MAX_ROOMS``; past that, a message into a new name is refused
(`RoomLimitError`, ``too_many_rooms``) and a socket into one is closed, each counted
(``gateway_rooms_refused_total``), while the rooms that exist keep working. So that the cap
never becomes a permanent refusal, a room with no message for ``GATEWAY_ROOM_IDLE_SECONDS``
and nobody present is forgotten, with its history and state; rooms with a policy or grants
are kept. Each process records a room's activity at most every `REFRESH_SECONDS` (a quarter of
the idle time when that is shorter), so the database sees one write per room and minute, not
one per message.
"""

import asyncio
import logging
import time
from collections import OrderedDict
from datetime import timedelta

from channels.db import database_sync_to_async
from django.conf import settings
from django.utils import timezone

from gateway import metrics, stamps
from gateway.errors import GatewayError
from gateway.models import Message, RetainedState, Room, RoomGrant, RoomPolicy

logger = logging.getLogger(__name__)

REFRESH_SECONDS = 60.0
KNOWN_ROOMS = 10_000  # rooms a process remembers having recorded (the least recent go first)
SWEEP_BATCH = 1000  # idle rooms looked at per sweep
COUNT_SECONDS = 5.0  # how long a count of the rooms answers for sockets into new rooms


class RoomLimitError(GatewayError):
    """A new room past the gateway's cap on rooms."""

    code = "too_many_rooms"
    status = 429


def max_rooms() -> int:
    return int(getattr(settings, "GATEWAY_MAX_ROOMS", 100_000))


def idle_seconds() -> float:
    return float(getattr(settings, "GATEWAY_ROOM_IDLE_SECONDS", 30 * 86400))


def _refresh_seconds() -> float:
    return min(REFRESH_SECONDS, idle_seconds() / 4)


_known: OrderedDict[str, float] = OrderedDict()  # room -> when this process last recorded it
_counted: tuple[int, float] | None = None  # the rooms recorded, and when they were counted
_sweeper: asyncio.Task[None] | None = None


async def record_room(room: str) -> None:
    """Record that ``room`` (a valid name) is in use now.

    Raises:
        RoomLimitError: ``room`` is new and the gateway holds its maximum of rooms.
    """
    global _counted  # noqa: PLW0603 - one cached count per process
    now = time.monotonic()
    seen = _known.get(room)
    if seen is not None and now - seen < _refresh_seconds():
        return
    try:
        created = await database_sync_to_async(_record)(room, max_rooms())
    except RoomLimitError:
        metrics.inc("rooms_refused", "message")
        raise
    if created:
        _counted = None  # the count sockets are let in by is out of date
    _remember(room, now)
    _start_sweeper()


async def may_open(room: str) -> bool:
    """Whether a socket may join ``room``: it exists, or the gateway has room for it.

    A socket does not create its room (a message does), so the count of rooms may be a few
    seconds old: a burst of handshakes costs the database one count, not one each.
    """
    global _counted  # noqa: PLW0603 - one cached count per process
    if room in _known:
        return True
    now, limit = time.monotonic(), max_rooms()
    if _counted is not None and now - _counted[1] < COUNT_SECONDS and _counted[0] < limit:
        return True
    exists, count = await database_sync_to_async(_existing)(room)
    _counted = (count, now)
    if exists:
        _remember(room, now)
    if exists or count < limit:
        return True
    metrics.inc("rooms_refused", "socket")
    return False


def _remember(room: str, now: float) -> None:
    _known[room] = now
    _known.move_to_end(room)
    while len(_known) > KNOWN_ROOMS:
        _known.popitem(last=False)


def _record(room: str, limit: int) -> bool:
    """Record activity in ``room``; whether that created it."""
    if Room.objects.filter(name=room).update(last_active=timezone.now()):
        return False
    if Room.objects.count() >= limit:
        raise RoomLimitError(
            f"this gateway holds its maximum of {limit} rooms: room {room} cannot be opened "
            "until an idle one is forgotten"
        )
    return Room.objects.get_or_create(name=room)[1]


def _existing(room: str) -> tuple[bool, int]:
    """Whether ``room`` is recorded, and how many rooms are."""
    return Room.objects.filter(name=room).exists(), Room.objects.count()


def _start_sweeper() -> None:
    global _sweeper  # noqa: PLW0603 - one sweeper per process
    if _sweeper is None or _sweeper.done():
        _sweeper = asyncio.get_running_loop().create_task(_sweep_forever(), name="rooms-sweep")


async def _sweep_forever() -> None:
    while True:
        await asyncio.sleep(max(1.0, min(REFRESH_SECONDS, idle_seconds() / 2)))
        try:
            await forget_idle_rooms()
        except asyncio.CancelledError:
            raise
        except Exception:
            metrics.inc("room_sweep_failures")
            logger.exception("forgetting idle rooms failed; trying again later")


async def forget_idle_rooms() -> list[str]:
    """Forget the rooms idle for longer than ``GATEWAY_ROOM_IDLE_SECONDS`` with nobody present
    (and no policy or grants): their records, history and state. The rooms forgotten."""
    from gateway.history import history_for  # late: history and presence build on this module
    from gateway.presence import presence_for

    cutoff = timezone.now() - timedelta(seconds=idle_seconds())
    candidates: list[str] = await database_sync_to_async(_idle_rooms)(cutoff)
    presence = presence_for()
    idle = [room for room in candidates if not await presence.members(room)]
    forgotten: list[str] = await database_sync_to_async(_forget)(idle, cutoff)
    for room in forgotten:
        _known.pop(room, None)
        await history_for().forget(room)
        await stamps.bump(stamps.retained_stamp(room))
    if forgotten:
        metrics.inc("rooms_forgotten", amount=len(forgotten))
        logger.info("forgot %d idle rooms", len(forgotten))
    return forgotten


def _idle_rooms(cutoff: object) -> list[str]:
    rooms = (
        Room.objects.filter(last_active__lt=cutoff)
        .exclude(name__in=RoomPolicy.objects.values("room"))
        .exclude(name__in=RoomGrant.objects.values("room"))
        .order_by("last_active")
        .values_list("name", flat=True)[:SWEEP_BATCH]
    )
    return list(rooms)


def _forget(rooms: list[str], cutoff: object) -> list[str]:
    forgotten = []
    for room in rooms:
        # Only if still idle: a message may have come since the rooms were listed.
        if Room.objects.filter(name=room, last_active__lt=cutoff).delete()[0]:
            Message.objects.filter(room=room).delete()
            RetainedState.objects.filter(room=room).delete()
            forgotten.append(room)
    return forgotten
