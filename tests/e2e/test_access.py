"""Rooms that protect: private rooms, API tokens, revocation, and floods."""

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.conftest import start_gateway
from tests.support.clients import read_until_closed, recv_json, ws_connect
from tests.support.processes import Gateway, Mosquitto, Redis, django_shell

SETUP = """
from django.contrib.auth import get_user_model
from gateway.models import RoomGrant, RoomPolicy
from gateway.tokens import issue_token
alice, _ = get_user_model().objects.get_or_create(username="alice")
RoomPolicy.objects.get_or_create(room="vault", defaults={"private": True})
RoomGrant.objects.get_or_create(room="vault", user=alice, defaults={"access": "write"})
print(issue_token(alice, "laptop")[1])
"""
REVOKE = """
from gateway.models import ApiToken
from gateway.tokens import revoke
for token in ApiToken.objects.filter(name="laptop"):
    revoke(token)
"""


@pytest.fixture
def gateway(
    tmp_path: Path, mosquitto: Mosquitto, redis_server: Redis, database_url: str
) -> Iterator[Gateway]:
    stack = start_gateway(
        tmp_path, mosquitto, redis_server, database_url,
        GATEWAY_WS_RATE="5", GATEWAY_WS_BURST="5",
    )  # fmt: skip
    yield stack
    stack.stop()


async def refused(url: str, **kwargs: Any) -> tuple[int, list[dict[str, Any]]]:
    """Connect, read until the server closes; its close code and the frames before."""
    async with connect(url, open_timeout=10, **kwargs) as ws:
        frames, code = await read_until_closed(ws)
    assert code is not None
    return code, frames


async def test_private_rooms_admit_their_members_and_refuse_strangers_with_4403(
    gateway: Gateway,
) -> None:
    token = await asyncio.to_thread(django_shell, SETUP, env=gateway.env)
    url = f"{gateway.ws}/ws/rooms/vault/"
    code, frames = await refused(url, origin=gateway.http)
    assert code == 4403
    assert [(f["type"], f["code"]) for f in frames] == [("error", "forbidden")]
    # A program with a token in the Authorization header needs no Origin.
    bearer = {"Authorization": f"Bearer {token}"}
    async with connect(url, additional_headers=bearer, open_timeout=10) as alice:
        welcome = json.loads(await asyncio.wait_for(alice.recv(), 10))
        assert welcome["type"] == "welcome"
        assert [m["name"] for m in welcome["presence"]] == ["alice"]  # the stranger never joined
        await alice.send(json.dumps({"message": "inside"}))
        assert (await recv_json(alice))["sender"] == "alice"
    # A browser offers the token as a subprotocol; the gateway accepts with it.
    async with connect(url, subprotocols=[f"token.{token}"], origin=gateway.http) as tab:  # type: ignore[list-item]
        assert tab.subprotocol == f"token.{token}"
        assert json.loads(await asyncio.wait_for(tab.recv(), 10))["type"] == "welcome"


async def test_a_revoked_token_closes_its_socket_with_4401(gateway: Gateway) -> None:
    token = await asyncio.to_thread(django_shell, SETUP, env=gateway.env)
    url = f"{gateway.ws}/ws/rooms/vault/"
    async with connect(url, additional_headers={"Authorization": f"Bearer {token}"}) as alice:
        assert json.loads(await asyncio.wait_for(alice.recv(), 10))["type"] == "welcome"
        await asyncio.to_thread(django_shell, REVOKE, env=gateway.env)
        frames, code = await read_until_closed(alice)  # within a check interval (5 s)
    assert code == 4401
    assert [f["code"] for f in frames] == ["unauthorised"]
    code, _ = await refused(url, additional_headers={"Authorization": f"Bearer {token}"})
    assert code == 4401


async def test_a_token_in_the_url_is_refused(gateway: Gateway) -> None:
    token = await asyncio.to_thread(django_shell, SETUP, env=gateway.env)
    code, frames = await refused(f"{gateway.ws}/ws/rooms/vault/?token={token}", origin=gateway.http)
    assert code == 4401
    assert "URL" in frames[0]["detail"]


async def test_a_flood_gets_error_frames_then_1008(gateway: Gateway) -> None:
    async with ws_connect(gateway.ws, "floodgate") as ws:
        for n in range(40):
            try:
                await ws.send(json.dumps({"message": n}))
            except ConnectionClosed:
                break
        frames, code = await read_until_closed(ws)
    assert code == 1008
    # The burst goes through the room (its echoes come back through the channel layer); the
    # warnings come straight from the socket's consumer, so the two may interleave.
    assert [f["message"] for f in frames if f["type"] == "message"] == [0, 1, 2, 3, 4]
    refusals = [f.get("code") for f in frames if f["type"] != "message"]
    assert refusals == ["rate_limited"] * 5  # then the close
