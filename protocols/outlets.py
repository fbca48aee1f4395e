"""Where a socket's frames go: straight to daphne's connection, or through ASGI's ``send``.

A socket that stops reading is not allowed to grow the server's memory: once it is more than
`SEND_BACKLOG_BYTES` behind, `Outlet.write` says so and the hub closes it with `CLOSE_SLOW`.
"""

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from gateway.jsonutil import dumps_bytes
from protocols.compat import GatewaySocket, claim_socket

CLOSE_SLOW = 1013  # "try again later": the client was not reading
# How far behind a socket may fall before it counts as not reading. Sized for a burst: 1 MiB is
# a few thousand typical frames. On daphne: bytes written to it while the server already held
# more than Twisted's buffer size (64 KiB) for it, beyond the kernel's buffers; through ASGI
# ``send``: bytes queued for it and not yet sent.
SEND_BACKLOG_BYTES = 1 << 20


class Frame:
    """One server frame, encoded once for every socket that gets it."""

    __slots__ = ("_prepared", "_text", "data")

    def __init__(self, text: str | None, data: bytes | None = None) -> None:
        """The frame of ``text``, or of ``data`` already encoded (then ``text`` may be None)."""
        self._text = text
        self.data = data if data is not None else (text or "").encode("utf-8")
        self._prepared: tuple[Any, Any] | None = None

    @classmethod
    def of(cls, value: Any) -> "Frame":
        """The frame of a JSON value, written straight to bytes."""
        return cls(None, dumps_bytes(value))

    @property
    def text(self) -> str:
        if self._text is None:
            self._text = self.data.decode("utf-8")
        return self._text

    def prepared(self, factory: Any) -> Any:
        """The frame as autobahn's ``factory`` frames it (``prepareMessage``, once per factory)."""
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
    """Writes frames straight to a daphne connection (`protocols.compat.GatewaySocket`)."""

    __slots__ = ("socket",)

    def __init__(self, socket: GatewaySocket) -> None:
        self.socket = socket

    def write(self, frame: Frame) -> bool:
        behind = self.socket.written_while_full
        if behind is not None and behind > SEND_BACKLOG_BYTES:
            return False
        return self.socket.send_frame(frame)

    def close(self, code: int) -> None:
        self.socket.close_with(code)


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
        except Exception:  # noqa: BLE001 - any server's failure: the socket went away meanwhile
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
    """The fastest outlet the server behind ``send`` allows (called in the socket's own task).

    On the gateway's daphne server (`protocols.compat.GatewayServer`) with the versions it was
    written for, the socket itself; otherwise ``send``.
    """
    socket = claim_socket()
    if socket is not None:
        return DaphneOutlet(socket)
    return AsgiOutlet(send)
