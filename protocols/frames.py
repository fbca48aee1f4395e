"""What a client sends on a room socket, read without side effects.

`read_frame` is the whole judgement on one frame: the frame, or a `Refusal` that says which error
frame answers it or which close code ends the socket. The consumer acts on it; tests and fuzzers
call it directly.
"""

from dataclasses import dataclass
from typing import Any

from gateway.jsonutil import MESSAGE_MAX_DEPTH, parse_json

CLOSE_TOO_BIG = 1009


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a frame is refused: an error frame ``code``/``detail``, or a ``close`` code."""

    code: str
    detail: str
    close: int | None = None


def read_frame(text_data: str | None, limit: int) -> dict[str, Any] | Refusal:
    """The client's frame ``{"message": <any JSON>, ...}``, or why it is refused.

    ``text_data`` is None for a binary frame. ``limit`` is the most UTF-8 bytes a frame may
    take; a bigger one closes the socket.
    """
    if text_data is None:
        return Refusal("binary_frame", "frames must be JSON text, not binary")
    if len(text_data) > limit or len(text_data.encode("utf-8", "surrogatepass")) > limit:
        return Refusal("frame_too_big", f"frames must be at most {limit} bytes", CLOSE_TOO_BIG)
    try:
        frame = parse_json(text_data, MESSAGE_MAX_DEPTH + 1)  # the frame holds the message
    except ValueError as exc:
        return Refusal("invalid_json", f"frames must be JSON: {exc}")
    if isinstance(frame, dict) and frame.get("type") == PRESENCE_LIST:
        return _presence_request(frame)
    if not isinstance(frame, dict) or "message" not in frame:
        return Refusal(
            "invalid_frame", 'send {"message": <any JSON value>} or {"type": "presence.list"}'
        )
    return frame


PRESENCE_LIST = "presence.list"
PAGE_DEFAULT, PAGE_MAX = 100, 1000  # members per page of the list asked for
_CURSOR_MAX_DIGITS = 20  # an unsigned 64-bit number


def read_page(cursor: Any, limit: Any) -> tuple[str, int]:
    """A page of a member list asked for: the cursor ("0", or what the last page gave) and the
    number of members. Raises ValueError saying what is wrong."""
    if cursor is None:
        cursor = "0"
    if (
        not isinstance(cursor, str)
        or not cursor.isascii()
        or not cursor.isdigit()
        or len(cursor) > _CURSOR_MAX_DIGITS
        or int(cursor) >= 1 << 64
    ):
        raise ValueError("cursor must be the cursor a page gave, or absent for the first page")
    if limit is None:
        limit = PAGE_DEFAULT
    if isinstance(limit, str) and limit.isascii() and limit.isdigit() and len(limit) <= 4:
        limit = int(limit)
    if type(limit) is not int or not 1 <= limit <= PAGE_MAX:
        raise ValueError(f"limit must be a whole number from 1 to {PAGE_MAX}")
    return cursor, limit


def _presence_request(frame: dict[str, Any]) -> dict[str, Any] | Refusal:
    try:
        cursor, limit = read_page(frame.get("cursor"), frame.get("limit"))
    except ValueError as exc:
        return Refusal("invalid_page", str(exc))
    return {"type": PRESENCE_LIST, "cursor": cursor, "limit": limit}
