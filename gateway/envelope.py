"""The message envelope: what every message looks like once it is inside a room."""

import uuid
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


def utc_timestamp(now: datetime | None = None) -> str:
    """An ISO 8601 UTC timestamp with milliseconds, e.g. ``2026-11-20T23:59:00.123Z``."""
    now = now or datetime.now(UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


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
        id=message_id or uuid.uuid4().hex,
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
