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

**Memory per socket.** An idle socket should cost little (see `lighten_sockets`).
"""

import asyncio
from collections import deque
from functools import partial
from typing import Any

from daphne.http_protocol import WebRequest
from daphne.server import Server
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
        result = original(self, *args, **options)
        _options_on_the_class(self)
        return result

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


def _options_on_the_class(factory: Any) -> None:
    """Hold the factory's options on its protocol class instead of on every protocol.

    autobahn copies each of its ~30 options from the factory onto every new protocol object,
    unless the protocol's class already has it; a per-factory subclass that has them all keeps
    each socket's attribute table half the size. The values are the factory's own, so every
    socket sees the same options as before.
    """
    base = getattr(factory, "_gateway_protocol_base", None)
    if base is None:
        base = factory.protocol
        factory._gateway_protocol_base = base
    options = {name: getattr(factory, name) for name in base.CONFIG_ATTRS}
    # A function on a class would become a method of each socket; staticmethod keeps it as is.
    options = {name: staticmethod(v) if callable(v) else v for name, v in options.items()}
    factory.protocol = type(base.__name__, (base,), options)


class Inbox:
    """The events waiting for one ASGI application instance: `asyncio.Queue`, made small.

    daphne gives every connection an unbounded `asyncio.Queue` and only ever calls
    ``put_nowait`` and ``get``. The queue holds four deques and an Event even while empty,
    about 3 KB for each idle socket; this holds a deque only while events wait. Getters are
    woken as `asyncio.Queue` wakes them: one per event, in turn, and a getter cancelled after
    its wake-up passes it on.
    """

    __slots__ = ("_getters", "_items")

    def __init__(self) -> None:
        self._items: deque[Any] | None = None
        self._getters: list[asyncio.Future[None]] = []

    def put_nowait(self, item: Any) -> None:
        if self._items is None:
            self._items = deque()
        self._items.append(item)
        self._wake_one()

    async def get(self) -> Any:
        while not self._items:
            getter = asyncio.get_running_loop().create_future()
            self._getters.append(getter)
            try:
                await getter
            except BaseException:
                getter.cancel()
                if getter in self._getters:
                    self._getters.remove(getter)
                if self._items and not getter.cancelled():
                    self._wake_one()
                raise
        item = self._items.popleft()
        if not self._items:
            self._items = None
        return item

    def qsize(self) -> int:
        return len(self._items) if self._items else 0

    def _wake_one(self) -> None:
        while self._getters:
            getter = self._getters.pop(0)
            if not getter.done():
                getter.set_result(None)
                return


def lighten_sockets() -> None:
    """Make an idle daphne socket smaller: an `Inbox` for its events, and no handshake kept.

    ``create_application`` is daphne's with that one change. autobahn keeps the handshake's
    raw bytes and parsed headers for the socket's whole life, and twisted's HTTP channel the
    upgraded request; the application has its own copy of the headers in the scope, so both
    are let go once the socket is open. Measured with 1,000 idle sockets, these and the
    flattened middleware (`protocols.flatten`) took a socket from 35 KB to 17 KB.
    """
    if getattr(Server, "_gateway_original_create", None) is not None:
        return
    Server._gateway_original_create = Server.create_application
    on_open = WebSocketProtocol.onOpen

    def open_and_forget_the_handshake(self: Any) -> None:
        on_open(self)
        self.http_request_data = b""
        self.http_headers = {}
        self.http_request_params = {}
        self.request.headers = {}
        self.request.params = {}

    WebSocketProtocol.onOpen = open_and_forget_the_handshake
    process = WebRequest.process

    def process_and_let_go(self: Any) -> Any:
        result = process(self)
        # A request upgraded to a WebSocket has handed its transport over for good; its
        # HTTP channel stays the transport's producer, but needs the request no more.
        channel = self.channel
        if self.transport is None and channel is not None and self in channel.requests:
            channel.requests.remove(self)
        return result

    WebRequest.process = process_and_let_go

    def create_application(self: Any, protocol: Any, scope: dict[str, Any]) -> Inbox | None:
        assert "application_instance" not in self.connections[protocol]
        inbox = Inbox()
        scope.setdefault("asgi", {"version": "3.0"})
        instance = self.application(
            scope=scope, receive=inbox.get, send=partial(self.handle_reply, protocol)
        )
        if protocol not in self.connections:
            return None
        self.connections[protocol]["application_instance"] = asyncio.ensure_future(instance)
        return inbox

    Server.create_application = create_application
