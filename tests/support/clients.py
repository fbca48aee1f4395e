"""Clients as users run them: a WebSocket client (a browser's view) and MQTT devices."""

import asyncio
import contextlib
import json
from typing import Any

import aiomqtt
from websockets.asyncio.client import ClientConnection, connect

RECEIVE_TIMEOUT = 10.0


def ws_connect(base: str, room: str, *, origin: str | None = None, **kwargs: Any) -> Any:
    """Connect to a room the way a browser on the gateway's own page does (same Origin)."""
    origin = origin or base.replace("ws://", "http://", 1)
    return connect(f"{base}/ws/rooms/{room}/", origin=origin, open_timeout=10, **kwargs)


async def recv_json(ws: ClientConnection, wait: float = RECEIVE_TIMEOUT) -> Any:
    """The next frame, parsed."""
    return json.loads(await asyncio.wait_for(ws.recv(), wait))


async def frames_within(ws: ClientConnection, seconds: float) -> list[Any]:
    """Every frame that arrives within ``seconds``."""
    frames: list[Any] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while (left := deadline - loop.time()) > 0:
        try:
            frames.append(json.loads(await asyncio.wait_for(ws.recv(), left)))
        except TimeoutError:
            break
    return frames


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
