"""Rooms that protect: private rooms, API tokens, revocation, and floods."""

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

from tests.conftest import start_gateway
from tests.support.clients import flood, frames_within, read_until_closed, recv_json, ws_connect
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
RECHECK_SECONDS = 1.0  # GATEWAY_ACCESS_RECHECK_SECONDS of the gateway under test
SLACK_SECONDS = 2.0
READER = """
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model
from django.contrib.sessions.backends.db import SessionStore
from gateway.models import RoomGrant, RoomPolicy
user, _ = get_user_model().objects.get_or_create(username="{name}")
RoomPolicy.objects.update_or_create(room="{room}", defaults={{"private": True}})
RoomGrant.objects.update_or_create(room="{room}", user=user, defaults={{"access": "{access}"}})
session = SessionStore()
session[SESSION_KEY] = str(user.pk)
session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
session[HASH_SESSION_KEY] = user.get_session_auth_hash()
session.create()
print(session.session_key)
"""
UNGRANT = """
from gateway.models import RoomGrant
print(RoomGrant.objects.filter(room="{room}", user__username="{name}").delete()[0])
"""
CLOSE_ROOM = """
from gateway.models import RoomPolicy
RoomPolicy.objects.update_or_create(room="{room}", defaults={defaults})
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
        GATEWAY_ACCESS_RECHECK_SECONDS=str(RECHECK_SECONDS),
    )  # fmt: skip
    yield stack
    stack.stop()


async def shell(gateway: Gateway, code: str, **names: str) -> str:
    return await asyncio.to_thread(django_shell, code.format(**names), env=gateway.env)


async def reader(gateway: Gateway, room: str, name: str, access: str = "read") -> dict[str, str]:
    """The cookie of a signed-in browser granted ``access`` to private ``room``."""
    key = await shell(gateway, READER, room=room, name=name, access=access)
    return {"Cookie": f"sessionid={key}"}


async def closed_after_revocation(ws: ClientConnection, revoked_at: float) -> list[Any]:
    """The frames before the server closed ``ws`` with 4403, within the re-check interval."""
    frames, code = await read_until_closed(ws, RECHECK_SECONDS + SLACK_SECONDS)
    took = time.monotonic() - revoked_at
    assert code == 4403
    assert took <= RECHECK_SECONDS + SLACK_SECONDS, f"closed {took:.1f} s after the revocation"
    return frames


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
    frames, code, seen = await flood(gateway.ws, "floodgate")
    assert code == 1008
    # The room got the first five and nothing past them.
    assert seen == [0, 1, 2, 3, 4]
    # The flooder's own echoes come back through the room, the warnings and the close
    # straight from its consumer: the close may overtake the last echoes, never reorder them.
    echoes = [f["message"] for f in frames if f["type"] == "message"]
    assert echoes == seen[: len(echoes)]
    refusals = [f.get("code") for f in frames if f["type"] != "message"]
    assert refusals == ["rate_limited"] * 5  # then the close


async def test_revoking_a_browsers_grant_closes_its_open_socket_with_4403(
    gateway: Gateway,
) -> None:
    cookie = await reader(gateway, "access-study", "reader-bob")
    async with ws_connect(gateway.ws, "access-study", additional_headers=cookie) as bob:
        assert [m["name"] for m in bob.welcome["presence"]] == ["reader-bob"]  # type: ignore[attr-defined]
        assert await shell(gateway, UNGRANT, room="access-study", name="reader-bob") == "1"
        frames = await closed_after_revocation(bob, time.monotonic())
    # The error frame came before the close, and nothing else did.
    assert [(f["type"], f["code"]) for f in frames] == [("error", "forbidden")]
    assert "access-study" in frames[0]["detail"]
    # Connecting again is refused as for any stranger.
    async with connect(
        f"{gateway.ws}/ws/rooms/access-study/", origin=gateway.http, additional_headers=cookie
    ) as again:
        frames, code = await read_until_closed(again)
    assert (code, [f["code"] for f in frames]) == (4403, ["forbidden"])


@pytest.mark.parametrize(
    "closing", [{"private": True}, {"private": False, "anonymous": "none"}], ids=str
)
async def test_closing_a_public_room_to_anonymous_visitors_closes_their_sockets_with_4403(
    gateway: Gateway, closing: dict[str, Any]
) -> None:
    room = "access-hall-private" if closing["private"] else "access-hall-none"
    async with ws_connect(gateway.ws, room) as first, ws_connect(gateway.ws, room) as second:
        await first.send(json.dumps({"message": "anyone may write here"}))
        for ws in (first, second):
            assert (await recv_json(ws))["message"] == "anyone may write here"
        await shell(gateway, CLOSE_ROOM, room=room, defaults=repr(closing))
        revoked_at = time.monotonic()
        for ws in (first, second):
            frames = await closed_after_revocation(ws, revoked_at)
            assert [(f["type"], f["code"]) for f in frames] == [("error", "forbidden")]


async def test_a_socket_whose_access_is_unchanged_stays_open_and_receives(
    gateway: Gateway,
) -> None:
    cookie = await reader(gateway, "access-library", "reader-carol")
    writer = await reader(gateway, "access-library", "writer-dave", access="write")
    async with ws_connect(gateway.ws, "access-library", additional_headers=cookie) as carol:
        # Several re-check intervals pass: no frame, no close.
        assert await frames_within(carol, RECHECK_SECONDS * 3.5) == []
        async with ws_connect(gateway.ws, "access-library", additional_headers=writer) as dave:
            await dave.send(json.dumps({"message": "still reading?"}))
            frame = await recv_json(carol)
            assert (frame["message"], frame["sender"]) == ("still reading?", "writer-dave")
            # Carol may read, not write: her sends are refused, her socket stays open.
            await carol.send(json.dumps({"message": "may I?"}))
            error = await recv_json(carol)
            assert (error["type"], error["code"]) == ("error", "forbidden")
            assert await frames_within(carol, RECHECK_SECONDS * 1.5) == []


@pytest.fixture
def patient_gateway(
    tmp_path: Path, mosquitto: Mosquitto, redis_server: Redis, database_url: str
) -> Iterator[Gateway]:
    """A gateway that re-checks open sockets only every minute: what it answers a handshake
    comes from its cached answers, unless a change moved their stamp."""
    stack = start_gateway(
        tmp_path, mosquitto, redis_server, database_url, GATEWAY_ACCESS_RECHECK_SECONDS="60"
    )
    yield stack
    stack.stop()


async def test_a_handshake_sees_a_change_made_by_another_process_at_once(
    patient_gateway: Gateway,
) -> None:
    gateway, room = patient_gateway, "access-stamped"
    url = f"{gateway.ws}/ws/rooms/{room}/"
    for _ in range(2):  # the second is answered from what the first cached
        async with ws_connect(gateway.ws, room) as visitor:
            assert visitor.welcome["room"] == room  # type: ignore[attr-defined]
    # Closed by another process (a shell, as an administrator's would be): the next stranger
    # is refused, though the gateway's cached answer for strangers here is a minute young.
    await shell(gateway, CLOSE_ROOM, room=room, defaults=repr({"private": True}))
    code, frames = await refused(url, origin=gateway.http)
    assert (code, [f["code"] for f in frames]) == (4403, ["forbidden"])
    # Opened again to readers: the next stranger is in.
    opened = {"private": False, "anonymous": "read"}
    await shell(gateway, CLOSE_ROOM, room=room, defaults=repr(opened))
    async with ws_connect(gateway.ws, room) as visitor:
        assert visitor.welcome["room"] == room  # type: ignore[attr-defined]
    # A grant taken back: the user's next socket is refused, though their first was admitted.
    cookie = await reader(gateway, room, "stamped-erin")
    async with ws_connect(gateway.ws, room, additional_headers=cookie) as erin:
        assert [m["name"] for m in erin.welcome["presence"]] == ["stamped-erin"]  # type: ignore[attr-defined]
    assert await shell(gateway, UNGRANT, room=room, name="stamped-erin") == "1"
    code, frames = await refused(url, origin=gateway.http, additional_headers=cookie)
    assert (code, [f["code"] for f in frames]) == (4403, ["forbidden"])
