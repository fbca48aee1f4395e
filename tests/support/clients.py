"""Clients as users run them: a WebSocket client (a browser's view) and MQTT devices."""

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import aiomqtt
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

RECEIVE_TIMEOUT = 10.0


@contextlib.asynccontextmanager
async def ws_connect(
    base: str, room: str, *, origin: str | None = None, since: int | None = None, **kwargs: Any
) -> AsyncIterator[ClientConnection]:
    """Join a room as a browser on the gateway's own page does (same Origin).

    The welcome frame the gateway sends first is read and kept as ``ws.welcome``.
    """
    origin = origin or base.replace("ws://", "http://", 1)
    query = f"?since={since}" if since is not None else ""
    url = f"{base}/ws/rooms/{room}/{query}"
    async with connect(url, origin=origin, open_timeout=10, **kwargs) as ws:  # type: ignore[arg-type]
        welcome = json.loads(await asyncio.wait_for(ws.recv(), RECEIVE_TIMEOUT))
        assert welcome["type"] == "welcome", welcome
        ws.welcome = welcome  # type: ignore[attr-defined]
        yield ws


async def recv_json(
    ws: ClientConnection, wait: float = RECEIVE_TIMEOUT, *, presence: bool = False
) -> Any:
    """The next frame, parsed (skipping presence frames unless ``presence``)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    while True:
        frame = json.loads(await asyncio.wait_for(ws.recv(), max(0.0, deadline - loop.time())))
        if presence or frame.get("type") != "presence":
            return frame


async def frames_within(
    ws: ClientConnection, seconds: float, *, presence: bool = False
) -> list[Any]:
    """Every frame that arrives within ``seconds`` (presence frames only if ``presence``)."""
    frames: list[Any] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while (left := deadline - loop.time()) > 0:
        try:
            frame = json.loads(await asyncio.wait_for(ws.recv(), left))
        except TimeoutError:
            break
        if presence or frame.get("type") != "presence":
            frames.append(frame)
    return frames


async def read_until_closed(
    ws: ClientConnection, wait: float = RECEIVE_TIMEOUT
) -> tuple[list[Any], int | None]:
    """Every frame until the server closes (presence frames left out), and its close code.

    Fails if the server has not closed after ``wait`` seconds without a frame.
    """
    frames: list[Any] = []
    try:
        while True:
            frame = json.loads(await asyncio.wait_for(ws.recv(), wait))
            if frame.get("type") != "presence":
                frames.append(frame)
    except ConnectionClosed as closed:
        return frames, closed.rcvd.code if closed.rcvd else None


def mqtt_client(port: int, **kwargs: Any) -> aiomqtt.Client:
    return aiomqtt.Client("127.0.0.1", port, **kwargs)


async def mqtt_messages_within(client: aiomqtt.Client, seconds: float) -> list[aiomqtt.Message]:
    """Every message the client receives within ``seconds``."""
    received: list[aiomqtt.Message] = []

    async def collect() -> None:
        async for message in client.messages:
            received.append(message)

    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(collect(), seconds)
    return received


async def flood(base: str, room: str, frames: int = 40) -> tuple[list[Any], int | None, list[Any]]:
    """Send ``frames`` messages as fast as a socket can into ``room`` while a second socket
    watches: what the flooder got before the server closed it, its close code, and the
    messages the watcher saw reach the room."""
    async with ws_connect(base, room) as watcher, ws_connect(base, room) as ws:
        for n in range(frames):
            try:
                await ws.send(json.dumps({"message": n}))
            except ConnectionClosed:
                break
        got, code = await read_until_closed(ws)
        seen = [f["message"] for f in await frames_within(watcher, 2.0) if f["type"] == "message"]
    return got, code, seen
