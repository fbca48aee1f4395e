"""daphne's WebSocket factory, held to the gateway's frame limit.

daphne takes its frame limit from its own command line (1 MiB unless told otherwise), and
autobahn, underneath, answers an oversized frame by dropping the TCP connection without a close
frame. The gateway promises close code 1009 at ``GATEWAY_MAX_FRAME_BYTES`` however daphne was
started, and an application cannot send 1009 itself (autobahn only lets it send 1000 and
3000-4999). So the factory's options are adjusted where daphne sets them: the limit is never
above the gateway's, and an oversized frame gets a close frame instead of a cut connection.
"""

from typing import Any

from daphne.ws_protocol import WebSocketFactory

_LIMIT_KEYS = ("maxMessagePayloadSize", "maxFramePayloadSize")


def hold_to_limit(limit: int) -> None:
    """Make every daphne WebSocket factory refuse frames over ``limit`` bytes with 1009."""
    original = getattr(WebSocketFactory, "_gateway_original_options", None)
    if original is None:
        original = WebSocketFactory.setProtocolOptions
        WebSocketFactory._gateway_original_options = original

    def set_protocol_options(self: Any, *args: Any, **options: Any) -> Any:
        for key in _LIMIT_KEYS:
            requested = options.get(key)
            options[key] = min(requested, limit) if requested else limit
        options["failByDrop"] = False
        return original(self, *args, **options)

    WebSocketFactory.setProtocolOptions = set_protocol_options
