"""The gateway's exceptions: few, flat, and carrying what a caller needs to answer."""


class GatewayError(Exception):
    """Base class of every error the gateway raises on purpose; ``status`` is its HTTP status."""

    code = "gateway_error"
    status = 400


class InvalidRoomError(GatewayError):
    """A room name that breaks the naming rules; ``name`` is what was given."""

    code = "invalid_room"

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"invalid room name {name!r}: {reason}")
        self.name = name
        self.reason = reason


class InvalidMessageError(GatewayError):
    """A message that cannot enter a room (not JSON-serialisable, too large, ...)."""

    code = "invalid_message"
