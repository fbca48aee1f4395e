"""Where a socket's frames go: straight to daphne's connection, or through ASGI's ``send``.

A socket that stops reading is not allowed to grow the server's memory: once more than
`SEND_BACKLOG_BYTES` wait for it in the server, `Outlet.write` says so and the hub closes it
with `CLOSE_SLOW`.
"""

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from gateway.jsonutil import dumps_bytes

CLOSE_SLOW = 1013  # "try again later": the client was not reading
# Bytes a socket may have waiting in the server (beyond the kernel's buffers) before it counts
# as not reading. Sized for a burst: 1 MiB is a few thousand typical frames.
SEND_BACKLOG_BYTES = 1 << 20


class Frame:
    """One server frame, encoded once for every socket that gets it."""

    __slots__ = ("_prepared", "_text", "data")

    def __init__(self, text: str) -> None:
        self._text: str | None = text
        self.data = text.encode("utf-8")
        self._prepared: tuple[Any, Any] | None = None

    @classmethod
    def of(cls, value: Any) -> "Frame":
        """The frame of a JSON value, written straight to bytes."""
        frame = cls.__new__(cls)
        frame._text, frame.data, frame._prepared = None, dumps_bytes(value), None
        return frame

    @property
    def text(self) -> str:
        if self._text is None:
            self._text = self.data.decode("utf-8")
        return self._text

    def prepared(self, factory: Any) -> Any:
        """The frame as autobahn's ``factory`` frames it (done once per factory)."""
        if self._prepared is None or self._prepared[0] is not factory:
            self._prepared = (factory, factory.prepareMessage(self.data))
        return self._prepared[1]


class Outlet(Protocol):
    """Where a socket's frames go."""

    def write(self, frame: Frame) -> bool:
        """Send ``frame``; False when the socket is closed or too far behind."""

    def close(self, code: int) -> None:
        """Close the socket with ``code``."""


class DaphneOutlet:
    """Writes prepared frames straight to a daphne (autobahn) connection.

    Twisted buffers what the kernel does not take yet; the bytes in that buffer tell how far
    behind the client is (the transport's producer slot is taken by daphne's HTTP channel).
    """

    __slots__ = ("protocol",)

    def __init__(self, protocol: Any) -> None:
        self.protocol = protocol

    def write(self, frame: Frame) -> bool:
        protocol = self.protocol
        if protocol.state != protocol.STATE_OPEN:
            return False
        transport = protocol.transport
        backlog = _buffered(transport)
        if backlog > SEND_BACKLOG_BYTES:
            return False
        prepared = frame.prepared(protocol.factory)
        if backlog or not _writes_now(protocol, transport):
            protocol.sendPreparedMessage(prepared)
            return True
        # Nothing is waiting: hand the frame to the kernel now. Twisted's write would buffer it
        # and register the socket for writing, then send and unregister on the next turn of
        # the loop: two epoll changes and a callback per socket and message.
        data = prepared.payloadHybi
        written = transport.writeSomeData(data)
        if not isinstance(written, int):  # the connection is lost: Twisted's write finds out
            written = 0
        if written < len(data):
            transport.write(data[written:])
        return True

    def close(self, code: int) -> None:
        if self.protocol.state == self.protocol.STATE_OPEN:
            self.protocol.serverClose(code=code)


def _writes_now(protocol: Any, transport: Any) -> bool:
    """Whether a frame may go straight to ``transport``'s socket (plain TCP, nothing queued)."""
    return (
        getattr(transport, "TLS", True) is False
        and transport.connected
        and not transport.disconnecting
        and not transport._writeDisconnected
        and protocol._perMessageCompress is None
        and not protocol.send_queue
    )


def _buffered(transport: Any) -> int:
    """Bytes a Twisted transport holds that the kernel has not taken yet."""
    data = getattr(transport, "dataBuffer", b"")
    return len(data) - getattr(transport, "offset", 0) + getattr(transport, "_tempDataLen", 0)


class AsgiOutlet:
    """Sends frames through the ASGI ``send`` callable (any ASGI server), in order."""

    __slots__ = ("_drainer", "_queue", "_queued_bytes", "_send", "closed")

    def __init__(self, send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        self._send = send
        self._queue: deque[Frame] = deque()
        self._queued_bytes = 0
        self._drainer: asyncio.Task[None] | None = None
        self.closed = False

    def write(self, frame: Frame) -> bool:
        if self.closed:
            return False
        if self._queued_bytes + len(frame.data) > SEND_BACKLOG_BYTES:
            return False
        self._queue.append(frame)
        self._queued_bytes += len(frame.data)
        if self._drainer is None:
            self._drainer = asyncio.get_running_loop().create_task(self._drain())
        return True

    async def _drain(self) -> None:
        try:
            while self._queue:
                frame = self._queue.popleft()
                self._queued_bytes -= len(frame.data)
                await self._send({"type": "websocket.send", "text": frame.text})
        except Exception:  # the socket went away while frames were queued
            self.closed = True
            self._queue.clear()
        finally:
            self._drainer = None

    def close(self, code: int) -> None:
        if not self.closed:
            self.closed = True
            self._queue.clear()
            send = self._send({"type": "websocket.close", "code": code})
            asyncio.get_running_loop().create_task(_quietly(send))


async def _quietly(awaitable: Awaitable[None]) -> None:
    with contextlib.suppress(Exception):
        await awaitable


def outlet_for(send: Callable[[dict[str, Any]], Awaitable[None]]) -> Outlet:
    """The fastest outlet the server behind ``send`` allows."""
    protocol = _daphne_protocol(send)
    if protocol is not None:
        return DaphneOutlet(protocol)
    return AsgiOutlet(send)


def _daphne_protocol(send: Any) -> Any:
    """daphne's connection behind an ASGI ``send``, if daphne serves it.

    daphne hands each application ``partial(server.handle_reply, protocol)``; Channels'
    session middleware wraps it in a method of an object that keeps it as ``real_send``
    (and adds nothing for WebSocket frames).
    """
    from daphne.ws_protocol import WebSocketProtocol

    for _ in range(4):
        args = getattr(send, "args", ())
        if args and isinstance(args[0], WebSocketProtocol):
            return args[0]
        send = getattr(getattr(send, "__self__", None), "real_send", None)
        if send is None:
            break
    return None
