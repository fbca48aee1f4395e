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
    if not isinstance(frame, dict) or "message" not in frame:
        return Refusal("invalid_frame", 'send {"message": <any JSON value>}')
    return frame
