"""The message envelope: what every message looks like once it is inside a room."""

import os
import threading
import time
from datetime import UTC, datetime
from typing import Any, Literal, NotRequired, TypedDict

Source = Literal["ws", "mqtt", "http"]
SOURCES: tuple[Source, ...] = ("ws", "mqtt", "http")


class Envelope(TypedDict):
    """A message in a room, as browsers receive it (without ``type``) and MQTT carries it.

    ``seq`` orders the room's messages; it is given when the message enters the room's history.
    """

    id: str
    room: str
    ts: str
    source: Source
    sender: str | None
    topic: str | None
    message: Any
    gateway: str
    encoding: NotRequired[Literal["base64"]]
    retained: NotRequired[bool]
    seq: NotRequired[int]


_TO_THE_SECOND = "%Y-%m-%dT%H:%M:%S."
_second: tuple[int, str] = (-1, "")  # the last whole second formatted, and its text


def utc_timestamp(now: datetime | None = None) -> str:
    """An ISO 8601 UTC timestamp with milliseconds, e.g. ``2026-11-20T23:59:00.123Z``."""
    global _second  # noqa: PLW0603 - a one-entry cache: formatting a date costs more than a message
    if now is not None:
        return f"{now.strftime(_TO_THE_SECOND)}{now.microsecond // 1000:03d}Z"
    second, millisecond = divmod(time.time_ns() // 1_000_000, 1000)
    if _second[0] != second:
        _second = (second, datetime.fromtimestamp(second, UTC).strftime(_TO_THE_SECOND))
    return f"{_second[1]}{millisecond:03d}Z"


_ID_BYTES = 16
_IDS_PER_DRAW = 256
_ids_lock = threading.Lock()
_pool, _taken = b"", 0  # random bytes drawn ahead, and how many of them are used


def new_id() -> str:
    """A fresh message id: 128 random bits as 32 hex digits (the form of ``uuid4().hex``).

    The bits come from the OS, as ``uuid4``'s do, drawn for `_IDS_PER_DRAW` ids at a time.
    """
    global _pool, _taken  # noqa: PLW0603 - one pool per process, shared by its threads
    with _ids_lock:
        if _taken >= len(_pool):
            _pool, _taken = os.urandom(_ID_BYTES * _IDS_PER_DRAW), 0
        pool, start = _pool, _taken
        _taken += _ID_BYTES
    return pool[start : start + _ID_BYTES].hex()


def new_envelope(
    *,
    room: str,
    message: Any,
    source: Source,
    sender: str | None,
    gateway: str,
    topic: str | None = None,
    base64: bool = False,
    retained: bool = False,
    message_id: str | None = None,
) -> Envelope:
    """Stamp a message with an id (fresh unless given) and the current time."""
    envelope = Envelope(
        id=message_id or new_id(),
        room=room,
        ts=utc_timestamp(),
        source=source,
        sender=sender,
        topic=topic,
        message=message,
        gateway=gateway,
    )
    if base64:
        envelope["encoding"] = "base64"
    if retained:
        envelope["retained"] = True
    return envelope
