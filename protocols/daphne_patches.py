"""Two adjustments to daphne's WebSocket layer (autobahn underneath), made at start-up.

**The frame limit.**
daphne takes its frame limit from its own command line (1 MiB unless told otherwise), and
autobahn, underneath, answers an oversized frame by dropping the TCP connection without a close
frame. The gateway promises close code 1009 at ``GATEWAY_MAX_FRAME_BYTES`` however daphne was
started, and an application cannot send 1009 itself (autobahn only lets it send 1000 and
3000-4999). So the factory's options are adjusted where daphne sets them: the limit is never
above the gateway's, and an oversized frame gets a close frame instead of a cut connection.

**Protocol close codes.** autobahn lets an application close only with 1000 or 3000-4999; any
other code raises, and daphne turns that into 1011. RFC 6455 defines 1008 (policy violation)
and 1009 (too big) for servers to send, and the gateway sends them (a flood, an oversized
frame), so those go out as close frames of their own.
"""

from typing import Any

from daphne.ws_protocol import WebSocketFactory, WebSocketProtocol

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
    _limit_incoming_only()


def _limit_incoming_only() -> None:
    """autobahn also refuses to *send* a message over the limit; ours may be larger.

    A welcome carries up to 50 messages and everyone present, so it can outgrow the limit a
    client's frames are held to; the limit protects the server, not the clients.
    """
    original = getattr(WebSocketProtocol, "_gateway_original_send", None)
    if original is None:
        original = WebSocketProtocol.sendMessage
        WebSocketProtocol._gateway_original_send = original

    def send_message(self: Any, *args: Any, **kwargs: Any) -> Any:
        limit = self.maxMessagePayloadSize
        self.maxMessagePayloadSize = 0
        try:
            return original(self, *args, **kwargs)
        finally:
            self.maxMessagePayloadSize = limit

    WebSocketProtocol.sendMessage = send_message


# Codes RFC 6455 lets a server send that autobahn refuses to applications.
PROTOCOL_CLOSE_CODES = frozenset({1001, 1003, 1007, 1008, 1009, 1011, 1012, 1013})


def allow_protocol_close_codes() -> None:
    """Let applications close daphne sockets with `PROTOCOL_CLOSE_CODES`."""
    original = getattr(WebSocketProtocol, "_gateway_original_close", None)
    if original is None:
        original = WebSocketProtocol.serverClose
        WebSocketProtocol._gateway_original_close = original

    def server_close(self: Any, code: int | None = None) -> Any:
        if code in PROTOCOL_CLOSE_CODES:
            return self.sendCloseFrame(code=code, isReply=False)
        return original(self, code)

    WebSocketProtocol.serverClose = server_close
