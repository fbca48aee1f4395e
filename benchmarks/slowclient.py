"""A browser that stops reading: it joins a room, then leaves everything in its socket.

Its receive buffer is made small before it connects, so the stall reaches the server within a
few kilobytes instead of the megabytes that loopback buffers would otherwise absorb. It speaks
just enough WebSocket (and MQTT, for a broker's WebSocket listener) to join.
"""

import asyncio
import base64
import contextlib
import os
import re
import socket
import struct
import time
from urllib.parse import urlsplit

from benchmarks.systems import Endpoint

RECEIVE_BUFFER = 4096
MARK = re.compile(rb'"bench": ?"(\d+):(\d+):(\d+)"')
TAIL = 64  # bytes kept between reads, so that a payload split across two reads is found


def _ws_frame(payload: bytes, opcode: int = 0x2) -> bytes:
    """A masked client frame (clients must mask)."""
    mask = os.urandom(4)
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
    else:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return header + mask + masked


def _mqtt_string(text: str) -> bytes:
    data = text.encode()
    return struct.pack("!H", len(data)) + data


def _mqtt_packet(first: int, body: bytes) -> bytes:
    assert len(body) < 128
    return bytes([first, len(body)]) + body


class SlowClient:
    """One stalled browser; `read_for` later counts what the server kept for it."""

    def __init__(self, endpoint: Endpoint, room: str) -> None:
        self.endpoint = endpoint
        self.room = room
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.closed_by_server = False

    async def connect(self, within: float = 15.0) -> None:
        mqtt = self.endpoint.ws_mode == "mqtt-ws"
        url = urlsplit(
            self.endpoint.ws_url if mqtt else self.endpoint.ws_url.format(room=self.room)
        )
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(within):
            await loop.sock_connect(sock, (url.hostname or "127.0.0.1", url.port or 80))
            self.reader, self.writer = await asyncio.open_connection(sock=sock)
            key = base64.b64encode(os.urandom(16)).decode()
            lines = [
                f"GET {url.path or '/'} HTTP/1.1",
                f"Host: {url.netloc}",
                "Upgrade: websocket",
                "Connection: Upgrade",
                f"Sec-WebSocket-Key: {key}",
                "Sec-WebSocket-Version: 13",
            ]
            if self.endpoint.origin:
                lines.append(f"Origin: {self.endpoint.origin}")
            if mqtt:
                lines.append("Sec-WebSocket-Protocol: mqtt")
            self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
            head = await self.reader.readuntil(b"\r\n\r\n")
            if b" 101 " not in head.split(b"\r\n", 1)[0]:
                raise ConnectionError(f"the WebSocket handshake failed: {head[:200]!r}")
            if mqtt:
                await self._join_broker()

    async def _join_broker(self) -> None:
        """CONNECT (no keepalive) and SUBSCRIBE at QoS 0; wait for the SUBACK."""
        assert self.reader is not None
        assert self.writer is not None
        client_id = _mqtt_string(f"bench-slow-{os.getpid()}")
        connect = b"\x00\x04MQTT\x04\x02\x00\x00" + client_id
        subscribe = b"\x00\x01" + _mqtt_string(f"rooms/{self.room}/#") + b"\x00"
        self.writer.write(_ws_frame(_mqtt_packet(0x10, connect)))
        self.writer.write(_ws_frame(_mqtt_packet(0x82, subscribe)))
        seen = b""
        while b"\x90\x03\x00\x01" not in seen:
            chunk = await self.reader.read(256)
            if not chunk:
                raise ConnectionError("the broker closed the connection before the SUBACK")
            seen += chunk

    async def read_for(self, seconds: float, step: int) -> dict[str, object]:
        """Read everything that arrives within ``seconds``; what step ``step`` brought."""
        assert self.reader is not None
        seqs: set[int] = set()
        received = 0
        tail = b""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                chunk = await asyncio.wait_for(self.reader.read(65536), left)
            except TimeoutError:
                break
            except ConnectionError:  # the server gave up on it and reset the connection
                self.closed_by_server = True
                break
            if not chunk:
                self.closed_by_server = True
                break
            received += len(chunk)
            window = tail + chunk
            for match in MARK.finditer(window):
                if int(match[1]) == step:
                    seqs.add(int(match[2]))
            tail = window[-TAIL:]
        return {"bytes": received, "messages": len(seqs), "closed": self.closed_by_server}

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError, ConnectionError):
                await self.writer.wait_closed()
