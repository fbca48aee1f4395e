"""Room names: the one rule every edge applies before a name goes anywhere.

A room name is 1-64 characters of ``[A-Za-z0-9_.-]`` that does not start with ``.`` or ``-``.
The alphabet keeps names safe as one MQTT topic level (no ``/``, ``+``, ``#``, ``$``, NUL) and
as part of a Channels group name.
"""

import re

from gateway.errors import InvalidRoomError

MAX_ROOM_LENGTH = 64
ROOM_PATTERN = r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,63}"
_ROOM_RE = re.compile(ROOM_PATTERN)


def validate_room(name: str) -> str:
    """Return ``name`` if it is a valid room name, else raise `InvalidRoomError`."""
    if not name:
        raise InvalidRoomError(name, "empty")
    if len(name) > MAX_ROOM_LENGTH:
        raise InvalidRoomError(name, f"longer than {MAX_ROOM_LENGTH} characters")
    if not _ROOM_RE.fullmatch(name):
        raise InvalidRoomError(
            name, "use letters, digits, '_', '.' and '-', not starting with '.' or '-'"
        )
    return name


def is_valid_room(name: str) -> bool:
    """Whether ``name`` is a valid room name."""
    return len(name) <= MAX_ROOM_LENGTH and _ROOM_RE.fullmatch(name) is not None
