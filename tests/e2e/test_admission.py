"""A process busy with its limit of handshakes asks the rest back, and they all get in.

Each test has its own Redis, so it can stop it: a handshake waits on Redis, so with Redis
stopped the handshakes let in stay in flight, and the next one is refused for sure.
"""

import asyncio
import contextlib
import json
import random
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import expect
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.conftest import start_gateway
from tests.support.browser import chromium
from tests.support.processes import Gateway, Mosquitto, Redis, http_get
from tests.support.prometheus import parse_exposition, samples

LIMIT = 2  # handshakes in flight per process


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[Redis]:
    server = Redis(tmp_path).start()
    yield server
    server.stop()


@pytest.fixture
def busy_gateway(
    tmp_path: Path, broker: Mosquitto, own_redis: Redis, database_url: str
) -> Iterator[Gateway]:
    workdir = tmp_path / "gateway"
    workdir.mkdir()
    stack = start_gateway(
        workdir, broker, own_redis, database_url, GATEWAY_WS_HANDSHAKES=str(LIMIT)
    )
    yield stack
    stack.stop()


@contextlib.asynccontextmanager
async def redis_stopped(redis: Redis) -> AsyncIterator[None]:
    assert redis.process is not None
    redis.process.signal(signal.SIGSTOP)
    try:
        yield
    finally:
        redis.process.signal(signal.SIGCONT)


async def open_socket(url: str, origin: str) -> ClientConnection:
    return await connect(url, origin=origin, open_timeout=60)


async def refused_while_others_wait(
    gateway: Gateway, room: str
) -> tuple[list["asyncio.Task[ClientConnection]"], dict[str, Any], int | None]:
    """Handshakes opened one at a time while Redis is stopped, until the gateway answers one
    at once: those left waiting, and that one's frame and close code."""
    url = f"{gateway.ws}/ws/rooms/{room}/"
    held: list[asyncio.Task[ClientConnection]] = []
    for _ in range(LIMIT + 3):
        opening = asyncio.create_task(open_socket(url, gateway.http))
        # Not long: daphne drops a handshake still unanswered after 5 s.
        done, _ = await asyncio.wait({opening}, timeout=1.5)
        if not done:
            held.append(opening)
            continue
        ws = opening.result()
        frame = json.loads(await asyncio.wait_for(ws.recv(), 10))
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 10)
        return held, frame, closed.value.rcvd.code if closed.value.rcvd else None
    pytest.fail(f"{len(held)} handshakes in flight and none answered (limit {LIMIT})")


async def join_as_the_page_does(gateway: Gateway, room: str) -> tuple[ClientConnection, int]:
    """A socket in ``room``, coming back at the turn a busy gateway gives; how many times it
    was asked back."""
    url = f"{gateway.ws}/ws/rooms/{room}/"
    for asked_back in range(100):
        ws = await connect(url, origin=gateway.http, open_timeout=30)
        frame = json.loads(await asyncio.wait_for(ws.recv(), 30))
        if frame["type"] == "welcome":
            return ws, asked_back
        assert frame["code"] == "busy", frame
        await ws.close()
        await asyncio.sleep(frame["retry_after"] * (1 + 0.1 * random.random()))
    pytest.fail("asked back 100 times")


def refused_busy(gateway: Gateway) -> float:
    families = parse_exposition(http_get(f"{gateway.http}/metrics")[1])
    return sum(s.value for s in samples(families, "gateway_ws_refused_total", reason="busy"))


async def test_past_its_limit_a_process_asks_handshakes_back_and_every_one_gets_in(
    busy_gateway: Gateway, own_redis: Redis
) -> None:
    async with redis_stopped(own_redis):
        held, frame, code = await refused_while_others_wait(busy_gateway, "queue")
        # Exactly the limit was let in; the next was answered at once, before any Redis work.
        assert len(held) == LIMIT
        assert code == 1013
        assert (frame["type"], frame["code"]) == ("error", "busy"), frame
        assert isinstance(frame["retry_after"], int | float)
        assert 0 <= frame["retry_after"] <= 30
    # Redis is back: those let in are welcomed; nothing they were doing was lost.
    for opening in held:
        ws = await asyncio.wait_for(opening, 30)
        assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "welcome"
        await ws.close()
    assert await asyncio.to_thread(refused_busy, busy_gateway) >= 1
    # A burst twenty times the limit: every socket gets in, coming back at its turn.
    joined = await asyncio.gather(
        *(join_as_the_page_does(busy_gateway, "queue") for _ in range(20 * LIMIT))
    )
    for ws, _ in joined:
        await ws.close()
    assert len(joined) == 20 * LIMIT


async def test_the_room_page_waits_its_turn_and_then_goes_live(
    busy_gateway: Gateway, own_redis: Redis
) -> None:
    async with chromium() as browser:
        page = await (await browser.new_context()).new_page()
        await page.goto(f"{busy_gateway.http}/healthz")
        async with redis_stopped(own_redis):
            held, _, _ = await refused_while_others_wait(busy_gateway, "waiting-room")
            await page.goto(f"{busy_gateway.http}/rooms/waiting-room/")
            status = page.locator("#status")
            await expect(status).to_contain_text("the gateway is busy", timeout=10_000)
            await expect(status).not_to_have_attribute("data-state", "open")
        await expect(status).to_have_attribute("data-state", "open", timeout=30_000)
        for opening in held:  # let in, or dropped by daphne while Redis was stopped
            with contextlib.suppress(Exception):
                await (await asyncio.wait_for(opening, 30)).close()
