"""What the gateway asks of daphne beyond its options, for the versions it was written against.

daphne serves the gateway through `GatewayServer`, a subclass of daphne's ``Server``. Where the
installed daphne, autobahn and Twisted are the versions in `WRITTEN_FOR`, the server gives its
WebSocket factory the gateway's options and its own protocol class (`GatewaySocket`):

**The frame limit.** An incoming frame or message over ``GATEWAY_MAX_FRAME_BYTES`` (or daphne's
own limit, if lower) gets a close frame with 1009 (autobahn's ``failByDrop=False``) instead of
a dropped connection. What the gateway sends is not held to that limit: a welcome carries up to
50 messages and everyone present, and autobahn would refuse it (see `GatewaySocket.sendMessage`).

**Protocol close codes.** autobahn lets an application close only with 1000 or 3000-4999 and
daphne turns anything else into 1011; RFC 6455 defines 1008 (policy), 1009 (too big), 1013
(try again later)... for servers to send, and the gateway sends them (`PROTOCOL_CLOSE_CODES`).

**Memory per idle socket** (about 28 KB without these, 11 KB with them and the gateway's
own savings, 10,000 sockets): autobahn's options held on the protocol class instead of copied
onto every socket; the socket's own attributes in slots (`SOCKET_SLOTS`); an `Inbox` instead
of daphne's `asyncio.Queue` per connection, and a `SendQueue` instead of autobahn's deque;
the handshake's bytes, headers and answer, and daphne's HTTP channel with the upgraded
request, let go once the socket is open; Twisted's transport attributes known before the
first connection (`learn_attributes`).

**Writing frames.** A frame goes straight to the socket when Twisted holds nothing for it
(`GatewaySocket.send_frame`), and a socket that stops reading is found through Twisted's
producer API (`GatewaySocket.pauseProducing`).

daphne's command line and its ``runserver`` build their server from a class attribute;
`install` (called as the gateway's apps load) points both at `GatewayServer`, so ``daphne
config.asgi:application`` gets it, and ``manage.py rungateway`` builds one itself.

**Other versions.** `GatewayServer` checks the versions as it starts. For any library outside
`WRITTEN_FOR` it logs a warning, counts ``compat_unpatched`` for it and leaves daphne as it
ships: fan-out goes through ASGI ``send`` (`protocols.outlets.AsgiOutlet`), and close codes
autobahn refuses are sent as it allows (`fallback_close_code`: 1008 -> 4008, 1009 -> 4009,
1011 -> 4011, 1013 -> 4013; anything else outside 1000 and 3000-4999 -> 1000). What is lost
there: frames over daphne's own limit (its ``--websocket-max-message-size``, 1 MiB unless
given) are dropped without a close frame, and nothing bigger than it can be sent; those
between the gateway's limit and daphne's still close with 4009. A client that stops reading is
not closed (daphne buffers what it is sent). Idle sockets take about 10 KB more, and fan-out
about twice the CPU per delivery.
"""

import asyncio
import logging
import re
from collections import deque
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from functools import partial
from importlib import metadata
from types import MappingProxyType
from typing import Any, Protocol

from daphne.server import Server
from daphne.ws_protocol import WebSocketProtocol
from twisted.internet import tcp
from twisted.internet.tcp import Connection

from gateway import metrics

logger = logging.getLogger(__name__)

# The versions this module was written and tested against (daphne 4.2.3, autobahn 26.11.1,
# Twisted 26.10.0), as [first, before) ranges: daphne's 4.2 releases from 4.2.3 on, and the
# same release series (year and month) of autobahn and Twisted. What it relies on, by library:
# - daphne: ``Server.run`` makes ``ws_factory`` before it calls ``ready_callable``;
#   ``create_application`` calls the application at once and returns the queue its protocols
#   ``put_nowait`` events on; ``WebSocketProtocol.serverClose`` closes for ASGI; the HTTP
#   channel that upgraded a socket stays its transport's producer and is needed no more;
#   ``clean_headers`` is read only as ``onConnect`` makes the scope.
# - autobahn: ``CONFIG_ATTRS`` are read from the protocol's class when it has them;
#   ``sendCloseFrame`` sends any code; the ``http_*`` and ``websocket_*`` handshake
#   attributes are not read once the socket is open; daphne never sends with ``sync`` or
#   ``chopsize``, so autobahn's own send queue (``send_queue``: ``append``, ``popleft``,
#   ``len``) stays empty and every write goes through ``sendData``; a socket's attributes are
#   set on the instance (the names in `SOCKET_SLOTS`) or are class attributes.
# - Twisted: a transport's ``dataBuffer`` and ``_tempDataLen`` are what it holds unsent, and
#   ``writeSomeData`` sends at once.
WRITTEN_FOR: tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...] = (
    ("daphne", (4, 2, 3), (4, 3)),
    ("autobahn", (26, 11), (26, 12)),
    ("twisted", (26, 10), (26, 11)),
)

# Codes RFC 6455 lets a server send that autobahn refuses to applications.
PROTOCOL_CLOSE_CODES = frozenset({1001, 1003, 1007, 1008, 1009, 1011, 1012, 1013})


def _release(version: str) -> tuple[int, ...]:
    """The release numbers at the start of ``version`` ("26.10.0rc1" -> (26, 10, 0))."""
    found = re.match(r"\d+(?:\.\d+)*", version)
    return tuple(int(part) for part in found.group().split(".")) if found else ()


def unsupported_versions() -> list[tuple[str, str]]:
    """The libraries installed at a version outside `WRITTEN_FOR`: (name, version) pairs."""
    outside: list[tuple[str, str]] = []
    for name, first, before in WRITTEN_FOR:
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            outside.append((name, "not installed"))
            continue
        if not first <= _release(version) < before:
            outside.append((name, version))
    return outside


def check_versions() -> bool:
    """Whether the adjustments apply; if not, say so in the log and in ``compat_unpatched``."""
    outside = unsupported_versions()
    for name, version in outside:
        first, before = next((f, b) for known, f, b in WRITTEN_FOR if known == name)
        logger.warning(
            "%s %s is outside the versions protocols/compat.py was written for (>=%s, <%s): "
            "daphne runs as it ships, without the gateway's adjustments (close codes 1008, "
            "1009, 1013 go out as 4008, 4009, 4013; slow readers are not closed)",
            name,
            version,
            ".".join(map(str, first)),
            ".".join(map(str, before)),
        )
        metrics.inc("compat_unpatched", name)
    return not outside


def install() -> None:
    """Make daphne's command line, and its ``runserver``, serve with `GatewayServer`.

    Both build their server from a class attribute that is there to be overridden
    (``CommandLineInterface.server_class``, ``runserver``'s ``server_cls``). The gateway runs
    daphne's own commands (``daphne``, ``python -m daphne``, ``manage.py runserver``), so the
    attributes are set here rather than in subclasses, unless someone else has set them.
    """
    from daphne.cli import CommandLineInterface
    from daphne.management.commands.runserver import Command as RunServer

    if CommandLineInterface.server_class is Server:
        CommandLineInterface.server_class = GatewayServer
    if RunServer.server_cls is Server:
        RunServer.server_cls = GatewayServer


class LazyDeque:
    """A FIFO queue that holds a `deque` only while it holds something.

    A deque holds a block of 64 slots even while empty (about 760 bytes), and each socket has
    queues that are empty nearly all their life. ``append``, ``popleft`` (`IndexError` when
    empty, as a deque) and ``len``.
    """

    __slots__ = ("_items",)

    def __init__(self) -> None:
        self._items: deque[Any] | None = None

    def append(self, item: Any) -> None:
        if self._items is None:
            self._items = deque()
        self._items.append(item)

    def popleft(self) -> Any:
        if not self._items:
            raise IndexError("pop from an empty queue")
        item = self._items.popleft()
        if not self._items:
            self._items = None
        return item

    def __len__(self) -> int:
        return len(self._items) if self._items else 0


class Inbox(LazyDeque):
    """The events waiting for one ASGI application instance: `asyncio.Queue`, made small.

    daphne gives every connection an unbounded `asyncio.Queue` and only ever calls
    ``put_nowait`` and ``get``. The queue holds four deques and an Event even while empty,
    about 3 KB for each idle socket; this holds a deque only while events wait. Getters are
    woken as `asyncio.Queue` wakes them: one per event, in turn, and a getter cancelled after
    its wake-up passes it on.
    """

    __slots__ = ("_getters",)

    def __init__(self) -> None:
        super().__init__()
        self._getters: list[asyncio.Future[None]] = []

    def put_nowait(self, item: Any) -> None:
        self.append(item)
        self._wake_one()

    async def get(self) -> Any:
        while not self:
            getter = asyncio.get_running_loop().create_future()
            self._getters.append(getter)
            try:
                await getter
            except BaseException:
                getter.cancel()
                if getter in self._getters:
                    self._getters.remove(getter)
                if self and not getter.cancelled():
                    self._wake_one()
                raise
        return self.popleft()

    def qsize(self) -> int:
        return len(self)

    def _wake_one(self) -> None:
        while self._getters:
            getter = self._getters.pop(0)
            if not getter.done():
                getter.set_result(None)
                return


class SendQueue(LazyDeque):
    """autobahn's send queue for one socket: a `LazyDeque`.

    autobahn gives every socket a `deque` for writes it delays (``sync`` or ``chopsize``, which
    daphne never asks for), so it stays empty for the socket's life; autobahn calls
    ``append``, ``popleft`` and ``len``.
    """

    __slots__ = ()


_NOTHING: Mapping[str, Any] = MappingProxyType({})

# The attributes autobahn and daphne give every open socket (of the versions in `WRITTEN_FOR`),
# held in slots rather than in a dict of each socket's own: CPython shares a dict's key table
# among a class's instances only up to 30 names, and a socket has about 70, so each socket had
# a dict of about 1.6 KB. A name missing here is kept in the dict as before; a name the
# protocol's classes define as a class attribute is left out (a slot would hide its default).
SOCKET_SLOTS = (
    # autobahn: WebSocketProtocol._connectionMade and the opening handshake
    "is_closed", "is_open", "_transport_details", "_raw_query_string", "_perMessageCompress",
    "trackedTimings", "trafficStats", "state", "send_state", "data", "send_queue",
    "triggered", "utf8validator", "wasMaxFramePayloadSizeExceeded",
    "wasMaxMessagePayloadSizeExceeded", "closedByMe", "failedByMe", "droppedByMe", "wasClean",
    "wasNotCleanReason", "wasServerConnectionDropTimeout", "wasOpenHandshakeTimeout",
    "wasCloseHandshakeTimeout", "wasServingFlashSocketPolicyFile", "localCloseCode",
    "localCloseReason", "remoteCloseCode", "remoteCloseReason", "openHandshakeTimeoutCall",
    "closeHandshakeTimeoutCall", "autoPingTimeoutCall", "autoPingPending",
    "autoPingPendingCall", "autoPingPendingSeq", "autoPingPendingSent", "http_request_data",
    "http_status_line", "http_headers", "http_request_uri", "http_request_path",
    "http_request_params", "http_request_host", "websocket_version", "websocket_protocols",
    "websocket_origin", "websocket_extensions", "_wskey", "websocket_protocol_in_use",
    "websocket_extensions_in_use", "http_response_data", "inside_message", "current_frame",
    # daphne: WebSocketProtocol.onConnect and the handshake
    "server", "request", "protocol_to_accept", "root_path", "socket_opened", "last_ping",
    "clean_headers", "client_addr", "server_addr", "path", "application_deferred",
    "application_queue", "handshake_deferred",
)  # fmt: skip


class Framed(Protocol):
    """A frame that autobahn's factory frames once for every socket (`protocols.outlets`)."""

    def prepared(self, factory: Any) -> Any: ...


class GatewaySocket(WebSocketProtocol):  # type: ignore[misc]
    """daphne's WebSocket protocol as the gateway's factory builds it (see the module).

    It is also its transport's producer (Twisted's IPushProducer), which is how it learns that
    its client is behind: Twisted pauses a streaming producer when the transport holds more
    than its ``bufferSize`` (64 KiB) and resumes it once all of it is sent. That is the one
    public signal of a slow reader; daphne's HTTP channel holds the producer slot after the
    upgrade, doing nothing with it, and gives it up in `onOpen`.
    """

    send_queue: Any  # autobahn's (see `SendQueue`)

    # Bytes sent since Twisted last found more than its bufferSize waiting for this socket;
    # None while it holds less (on the class: no entry on a socket that never fell behind).
    written_while_full: int | None = None

    def onOpen(self) -> None:
        super().onOpen()
        # The application has its own copy of the headers (in its scope): what autobahn kept of
        # the handshake for the socket's life (its bytes, the headers parsed, the answer sent)
        # can go. Read-only empties in their place: nothing reads them once the socket is open.
        self.http_request_data = self.http_response_data = b""
        self.http_status_line = self.http_request_uri = self.http_request_host = ""
        self.websocket_origin = self._wskey = self.request.host = self.request.origin = ""
        self.http_headers = self.http_request_params = _NOTHING
        self.request.headers = self.request.params = _NOTHING
        self.websocket_protocols = self.websocket_extensions = ()
        self.request.protocols = self.request.extensions = ()
        self.clean_headers = ()  # daphne's, read as it makes the application's scope
        if not self.send_queue:  # autobahn's own send queue: see `SendQueue`
            self.send_queue = SendQueue()
        # Twisted's public producer API (autobahn passes it on to the transport): daphne's
        # HTTP channel, and with it the upgraded request, is let go; this socket takes its place.
        self.unregisterProducer()
        self.registerProducer(self, True)

    def pauseProducing(self) -> None:
        """Twisted holds more than its bufferSize for this socket (called on every write)."""
        if self.written_while_full is None:
            self.written_while_full = 0

    def resumeProducing(self) -> None:
        """Twisted has sent all it held for this socket."""
        self.written_while_full = None
        if getattr(self.transport, "disconnecting", False):
            # Closing: a transport with a producer waits for it before it closes.
            self.unregisterProducer()

    def stopProducing(self) -> None:
        """The connection is gone; autobahn hears of it as well."""

    def sendMessage(
        self,
        payload: bytes,
        isBinary: bool = False,
        fragmentSize: int | None = None,
        sync: bool = False,
        doNotCompress: bool = False,
    ) -> None:
        """As autobahn's, but not held to the limit on what the socket receives.

        autobahn refuses to send a message over ``maxMessagePayloadSize``; a prepared message is
        not checked. ``doNotCompress``: sent whole even if compression were agreed (it is not:
        the factory accepts no offer).
        """
        if self.state != self.STATE_OPEN or fragmentSize is not None or sync:
            super().sendMessage(payload, isBinary, fragmentSize, sync, doNotCompress)
            return
        self.sendPreparedMessage(self.factory.prepareMessage(payload, isBinary, True))

    def serverClose(self, code: int | None = None) -> None:
        """Close for the application, with `PROTOCOL_CLOSE_CODES` too."""
        if code in PROTOCOL_CLOSE_CODES:
            self.sendCloseFrame(code=code, isReply=False)
        else:
            super().serverClose(code)

    def close_with(self, code: int) -> None:
        """Close the socket with ``code`` (if it is open)."""
        if self.state == self.STATE_OPEN:
            self.serverClose(code)

    def send_frame(self, frame: Framed) -> bool:
        """Send ``frame``; False when the socket is not open.

        When Twisted holds nothing for the socket the frame goes to the kernel at once.
        Twisted's write would buffer it and register the socket for writing, then send and
        unregister on the next turn of the loop: two epoll changes and a callback per socket
        and message (about half of daphne's CPU per delivery in a room of 100).
        """
        if self.state != self.STATE_OPEN:
            return False
        data: bytes = frame.prepared(self.factory).payloadHybi
        transport = self.transport
        if self.written_while_full is not None:
            self.written_while_full += len(data)
        elif _holds_nothing(transport):
            written = transport.writeSomeData(data)
            if not isinstance(written, int):  # the connection is lost: Twisted's write finds out
                written = 0
            if written == len(data):
                return True
            data = data[written:]
        self.sendData(data)
        return True


def _holds_nothing(transport: Any) -> bool:
    """Whether ``transport`` is a plain TCP (or Unix) socket with nothing unsent, not closing.

    Not TLS: Twisted's TLS transport is a wrapper that hands unknown attributes on to the TCP
    transport under it, whose ``writeSomeData`` would send the frame unencrypted.
    """
    return bool(
        isinstance(transport, Connection)
        and transport.TLS is False
        and transport.connected
        and not transport.disconnecting
        and not transport.dataBuffer
        and not transport._tempDataLen  # noqa: SLF001 - Twisted has no public count of unsent bytes
    )


_socket: ContextVar[GatewaySocket | None] = ContextVar("gateway_socket", default=None)


def claim_socket() -> GatewaySocket | None:
    """The `GatewaySocket` whose application this task runs, if any; once.

    `GatewayServer` sets it as it starts the application (its task inherits it); claiming
    clears it, so the tasks a consumer starts later keep no reference to its socket.
    """
    socket = _socket.get()
    if socket is not None:
        _socket.set(None)
    return socket


def _refuse_compression(offers: Any) -> None:
    """autobahn's ``perMessageCompressionAccept``: no offer is accepted."""


class GatewayServer(Server):  # type: ignore[misc]
    """daphne's server with the gateway's WebSocket protocol and options (see the module)."""

    def __init__(self, application: Any, **options: Any) -> None:
        self.adjusted = check_versions()
        self.next_inbox: Inbox | None = None
        if self.adjusted:
            self.inner_application = application
            application = self._application_with_inbox
            options["ready_callable"] = partial(self._ready, options.get("ready_callable"))
        else:
            application = allowed_close_codes(application)
        super().__init__(application=application, **options)

    def _ready(self, then: Callable[[], None] | None) -> None:
        """daphne has made its factories and not yet accepted a connection."""
        configure_websockets(self.ws_factory)
        learn_attributes(tcp.Server, TRANSPORT_ATTRIBUTES)
        if then is not None:
            then()

    def create_application(self, protocol: Any, scope: dict[str, Any]) -> Any:
        if not self.adjusted:
            return super().create_application(protocol, scope)
        # daphne's queue is made and dropped at once; the application gets the inbox instead.
        self.next_inbox = inbox = Inbox()
        token = _socket.set(protocol) if isinstance(protocol, GatewaySocket) else None
        try:
            queue = super().create_application(protocol, scope)
        finally:
            if token is not None:
                _socket.reset(token)
            self.next_inbox = None
        return None if queue is None else inbox

    def _application_with_inbox(self, *, scope: Any, receive: Any, send: Any) -> Any:
        inbox = self.next_inbox
        receive = inbox.get if inbox is not None else receive
        return self.inner_application(scope=scope, receive=receive, send=send)


def configure_websockets(factory: Any) -> None:
    """Give daphne's WebSocket ``factory`` the gateway's options and protocol class.

    The options are held on a subclass of `GatewaySocket` made for the factory: autobahn copies
    each of its ~30 options from the factory onto every new socket unless the socket's class
    already has it, and a socket's attribute table is half the size without them.
    """
    from gateway.conf import gateway_settings

    limit = gateway_settings().max_frame_bytes
    limits = {}
    for key in ("maxMessagePayloadSize", "maxFramePayloadSize"):
        requested = getattr(factory, key)
        limits[key] = min(requested, limit) if requested else limit
    factory.setProtocolOptions(
        **limits,
        failByDrop=False,
        perMessageCompressionAccept=_refuse_compression,
        allowNullOrigin=factory.allowNullOrigin,  # the one option a call resets unless given
    )
    options = {name: getattr(factory, name) for name in GatewaySocket.CONFIG_ATTRS}
    # A function on a class would become a method of each socket; staticmethod keeps it as is.
    held: dict[str, Any] = {
        name: staticmethod(v) if callable(v) else v for name, v in options.items()
    }
    held["__slots__"] = tuple(name for name in SOCKET_SLOTS if not hasattr(GatewaySocket, name))
    factory.protocol = type(GatewaySocket.__name__, (GatewaySocket,), held)


# What Twisted sets on each connection's transport, some of it only at its first write.
TRANSPORT_ATTRIBUTES = (
    "reactor", "socket", "fileno", "protocol", "server", "client", "sessionno", "hostname",
    "logstr", "repstr", "connected", "producer", "streamingProducer", "dataBuffer", "offset",
    "_tempDataBuffer", "_tempDataLen",
)  # fmt: skip


def learn_attributes(cls: type, names: tuple[str, ...]) -> None:
    """Tell CPython now that instances of ``cls`` will have the attributes ``names``.

    CPython (3.11) shares one table of attribute names among a class's instances, and takes a
    new name into it only while the class has made few instances. A name first set later,
    when a burst of connections has made dozens of transports before any of them wrote,
    gives every later instance a dict of its own: about 650 bytes more per socket for
    Twisted's transport, which sets ``offset`` only as it first writes. Setting the names on
    one instance made for the purpose puts them in the table before the first connection.
    """
    probe: object = object.__new__(cls)
    for name in names:
        if not hasattr(getattr(cls, name, None), "__set__"):  # a property is not an attribute
            object.__setattr__(probe, name, None)


def fallback_close_code(code: int) -> int:
    """The close code autobahn lets an application send for ``code``.

    1000 and 3000-4999 as they are; a code RFC 6455 defines (1001-1015) moves to the private
    range with the same last digits (1008 -> 4008, 1009 -> 4009, 1013 -> 4013); others 1000.
    """
    if code == 1000 or 3000 <= code <= 4999:
        return code
    if 1001 <= code <= 1015:
        return 4000 + code - 1000
    return 1000


def allowed_close_codes(application: Any) -> Any:
    """``application`` with its WebSocket close codes moved to those autobahn allows."""

    async def with_allowed_close_codes(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            await application(scope, receive, send)
            return

        async def send_allowed(message: dict[str, Any]) -> None:
            code = message.get("code")
            if message.get("type") == "websocket.close" and code is not None:
                message = {**message, "code": fallback_close_code(code)}
            await send(message)

        await application(scope, receive, send_allowed)

    return with_allowed_close_codes
