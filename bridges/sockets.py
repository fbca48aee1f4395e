"""A read buffer under paho's socket.

paho reads each packet's header a byte at a time (a ``recv`` per byte) and then its body: four
or five system calls per message. `ReadBuffer` takes what the kernel has in one ``recv`` and
serves paho's small reads from it; its ``pending()`` (which paho asks of TLS sockets too) makes
paho read again at once while bytes remain, instead of waiting for the socket to be readable.
"""

from typing import Any

CHUNK_BYTES = 64 * 1024


class ReadBuffer:
    """Wraps a connected socket; everything but ``recv`` and ``pending`` goes to it."""

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._buffer = b""
        self._offset = 0

    def recv(self, size: int) -> bytes:
        if self._offset >= len(self._buffer):
            chunk = self._sock.recv(max(size, CHUNK_BYTES))  # may raise BlockingIOError
            if len(chunk) <= size:
                return bytes(chunk)
            self._buffer, self._offset = chunk, 0
        start = self._offset
        self._offset = min(start + size, len(self._buffer))
        return self._buffer[start : self._offset]

    def pending(self) -> int:
        """Bytes read from the socket that paho has not taken yet (and the TLS layer's own)."""
        inner = self._sock.pending() if hasattr(self._sock, "pending") else 0
        return len(self._buffer) - self._offset + int(inner)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)
