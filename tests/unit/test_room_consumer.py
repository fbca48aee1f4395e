"""The room consumer at the ASGI level, on the in-memory channel layer and transport."""

import asyncio
import gc
from collections.abc import AsyncIterator
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.layers import channel_layers, get_channel_layer
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator

from gateway import metrics
from gateway.conf import GatewaySettings
from gateway.events import BRIDGE_CHANNEL
from gateway.history import close_histories
from gateway.models import RoomPolicy
from gateway.presence import Member, presence_for
from gateway.transport import messages_event, transport
from protocols.consumers.room import RoomConsumer
from protocols.fanout import hub_for
from protocols.routing import websocket_urlpatterns

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
async def in_memory_layer(settings: Any) -> AsyncIterator[None]:
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    settings.GATEWAY = GatewaySettings(gateway_id="unit", max_frame_bytes=2048)
    channel_layers.backends.clear()
    yield
    await close_histories()  # their writers must not outlive the test's database
    channel_layers.backends.clear()


def communicator(room: str, query: str = "") -> WebsocketCommunicator:
    return WebsocketCommunicator(URLRouter(websocket_urlpatterns), f"/ws/rooms/{room}/{query}")


async def join(room: str, query: str = "") -> tuple[WebsocketCommunicator, dict[str, Any]]:
    """A connected socket and the welcome frame it got."""
    ws = communicator(room, query)
    assert (await ws.connect())[0]
    welcome = await ws.receive_json_from()
    assert welcome["type"] == "welcome"
    return ws, welcome


async def test_a_configured_frame_limit_closes_with_1009() -> None:
    ws, _ = await join("lab")
    await ws.send_json_to({"message": "x" * 2000})
    assert len((await ws.receive_json_from())["message"]) == 2000
    before = metrics.get("ws_closed", "frame_too_big")
    await ws.send_to(text_data="é" * 1100)  # 1,100 characters, 2,200 bytes
    assert await ws.receive_output() == {"type": "websocket.close", "code": 1009}
    assert metrics.get("ws_closed", "frame_too_big") == before + 1


async def test_a_browser_message_goes_to_the_room_and_to_the_bridge() -> None:
    (first, _), (second, _) = await join("lab"), await join("lab")
    await first.send_json_to({"message": {"on": True}, "type": "bridge.shutdown"})
    frame: dict[str, Any] = await second.receive_json_from()
    assert frame["type"] == "message"
    assert "gateway" not in frame  # the gateway id is for the broker, not browsers
    event = await get_channel_layer().receive(BRIDGE_CHANNEL)
    assert event["type"] == "mqtt.publish"
    assert event["envelope"]["id"] == frame["id"]
    assert event["envelope"]["gateway"] == "unit"
    await first.disconnect()
    await second.disconnect()


async def test_a_refused_room_never_joins_a_group() -> None:
    ws = communicator(".hidden")
    connected, _ = await ws.connect()
    assert not connected
    assert ".hidden" not in hub_for().rooms


async def test_a_redelivered_message_reaches_a_socket_once() -> None:
    ws, _ = await join("lab")
    envelope: Any = {
        "id": "same-id",
        "room": "lab",
        "ts": "2026-11-20T23:59:00.123Z",
        "source": "mqtt",
        "sender": "meter",
        "topic": "rooms/lab/meter",
        "message": {"seq": 1},
        "gateway": "unit",
    }
    for _ in range(2):  # the bridge crashed after handing it on, and the broker redelivered
        await transport().send("lab", [messages_event([envelope])])
    await transport().send("lab", [messages_event([dict(envelope, id="next-id")])])
    assert (await ws.receive_json_from())["id"] == "same-id"
    assert (await ws.receive_json_from())["id"] == "next-id"
    assert await ws.receive_nothing(0.2)
    await ws.disconnect()


async def test_a_fresh_join_gets_recent_messages_and_a_resume_gets_exactly_the_missed() -> None:
    writer, _ = await join("hist")
    for n in range(5):
        await writer.send_json_to({"message": n})
        await writer.receive_json_from()
    _, welcome = await join("hist")
    assert [m["message"] for m in welcome["messages"]] == [0, 1, 2, 3, 4]
    seqs = [m["seq"] for m in welcome["messages"]]
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == 5
    assert welcome["seq"] == seqs[-1]
    assert welcome["gap"] is False
    _, resumed = await join("hist", f"?since={seqs[1]}")
    assert [m["message"] for m in resumed["messages"]] == [2, 3, 4]
    _, current = await join("hist", f"?since={seqs[-1]}")
    assert current["messages"] == []


@pytest.mark.parametrize("since", ["yesterday", "9" * 400, "-1", "9223372036854775808", "١٢"])
async def test_a_bad_since_is_answered_and_the_join_goes_on(since: str) -> None:
    ws = communicator("hist", f"?since={since}")
    assert (await ws.connect())[0]
    error = await ws.receive_json_from()
    assert (error["type"], error["code"]) == ("error", "invalid_since")
    assert (await ws.receive_json_from())["type"] == "welcome"
    await ws.send_json_to({"message": "still usable"})
    assert (await ws.receive_json_from())["message"] == "still usable"


async def test_a_socket_that_loses_read_access_gets_forbidden_then_4403(settings: Any) -> None:
    settings.ACCESS_RECHECK_SECONDS = 0.2
    ws, _ = await join("lab-closing")
    stays, _ = await join("lab-open")
    before = metrics.get("ws_closed", "access_revoked")
    await database_sync_to_async(RoomPolicy.objects.create)(room="lab-closing", private=True)
    error = await ws.receive_json_from(timeout=2)
    assert (error["type"], error["code"]) == ("error", "forbidden")
    assert await ws.receive_output(timeout=2) == {"type": "websocket.close", "code": 4403}
    assert metrics.get("ws_closed", "access_revoked") == before + 1
    # A socket whose access is unchanged stays open across intervals.
    assert await stays.receive_nothing(0.6)
    await stays.send_json_to({"message": "still here"})
    assert (await stays.receive_json_from())["message"] == "still here"
    await stays.disconnect()


async def test_a_socket_that_may_only_read_is_refused_each_send_and_stays_open(
    settings: Any,
) -> None:
    settings.ACCESS_RECHECK_SECONDS = 0.2
    ws, _ = await join("lab-readonly")
    await database_sync_to_async(RoomPolicy.objects.create)(room="lab-readonly", anonymous="read")
    await asyncio.sleep(0.5)  # a check has seen the new policy
    await ws.send_json_to({"message": "hello"})
    error = await ws.receive_json_from()
    assert (error["type"], error["code"]) == ("error", "forbidden")
    assert await ws.receive_nothing(0.5)  # still open: it may read
    await ws.disconnect()


async def test_browsers_have_no_verified_field_and_devices_say_whether_they_are_registered() -> (
    None
):
    await presence_for().join("lab-who", "device:a", "device", "a", hold=False, verified=True)
    await presence_for().join("lab-who", "device:b", "device", "b", hold=False, verified=False)
    ws, welcome = await join("lab-who")
    by_name = {m["name"]: m for m in welcome["presence"]}
    assert (by_name["a"]["verified"], by_name["b"]["verified"]) == (True, False)
    (browser,) = (m for m in welcome["presence"] if m["kind"] == "browser")
    assert "verified" not in browser
    await ws.disconnect()


def test_a_member_stored_before_verified_existed_still_decodes() -> None:
    old = {"key": "device:c", "kind": "device", "name": "c", "since": "2024-01-01T00:00:00Z"}
    member = Member.from_dict(old)
    assert member.verified is None
    assert member.as_dict() == old
    newer = Member.from_dict({**old, "verified": True, "added_later": 1})
    assert newer.as_dict() == {**old, "verified": True}


def from_address(address: str, room: str) -> WebsocketCommunicator:
    """An anonymous socket as daphne would open it for a client at ``address``."""
    router = URLRouter(websocket_urlpatterns)

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await router({**scope, "client": (address, 50000)}, receive, send)

    return WebsocketCommunicator(app, f"/ws/rooms/{room}/")


async def test_anonymous_sockets_past_the_cap_of_an_address_are_refused_and_leave_nothing(
    settings: Any,
) -> None:
    settings.WS_MAX_ANONYMOUS_PER_ADDRESS = 3
    before = metrics.get("ws_refused", "too_many_sockets")
    admitted = []
    for _ in range(3):
        ws = from_address("192.0.2.7", "lobby-cap")
        assert (await ws.connect())[0]
        assert (await ws.receive_json_from())["type"] == "welcome"
        admitted.append(ws)
    for _ in range(5):  # refused, again and again, each counted, none kept
        refused = from_address("192.0.2.7", "other-room")
        assert (await refused.connect())[0]
        error = await refused.receive_json_from()
        assert (error["type"], error["code"]) == ("error", "too_many_sockets")
        assert (await refused.receive_output())["code"] == 1008
    assert metrics.get("ws_refused", "too_many_sockets") == before + 5
    neighbour = from_address("192.0.2.8", "lobby-cap")  # another address gets in
    assert (await neighbour.connect())[0]
    assert (await neighbour.receive_json_from())["type"] == "welcome"
    await admitted[0].disconnect()
    again = from_address("192.0.2.7", "lobby-cap")  # a place freed is a place to take
    assert (await again.connect())[0]
    assert (await again.receive_json_from())["type"] == "welcome"
    for ws in [*admitted[1:], neighbour, again]:
        await ws.disconnect()


async def test_a_refused_private_room_takes_no_place(settings: Any) -> None:
    settings.WS_MAX_ANONYMOUS_PER_ADDRESS = 1
    await database_sync_to_async(RoomPolicy.objects.create)(room="cap-private", private=True)
    for _ in range(3):
        ws = from_address("192.0.2.9", "cap-private")
        assert (await ws.connect())[0]
        assert (await ws.receive_json_from())["code"] == "forbidden"
        assert (await ws.receive_output())["code"] == 4403
    ws = from_address("192.0.2.9", "cap-public")
    assert (await ws.connect())[0]
    assert (await ws.receive_json_from())["type"] == "welcome"
    await ws.disconnect()


async def test_a_big_rooms_welcome_has_the_count_and_the_list_comes_a_page_at_a_time(
    settings: Any,
) -> None:
    settings.GATEWAY = GatewaySettings(gateway_id="unit", presence_list_max=3)
    for n in range(5):
        await presence_for().join("crowd", f"device:d{n}", "device", f"d{n}", hold=False)
    ws, welcome = await join("crowd")
    assert (welcome["presence"], welcome["presence_count"]) == ([], 6)  # five devices and me
    names: list[str] = []
    cursor = None
    for _ in range(10):  # bounded: pages of two
        await ws.send_json_to({"type": "presence.list", "cursor": cursor, "limit": 2})
        page = await ws.receive_json_from()
        assert (page["type"], page["count"]) == ("presence.list", 6)
        assert len(page["members"]) <= 2
        names += [m["name"] for m in page["members"]]
        cursor = page["cursor"]
        if cursor is None:
            break
    assert sorted(n for n in names if not n.startswith("guest-")) == [f"d{n}" for n in range(5)]
    assert len(names) == 6
    await ws.send_json_to({"type": "presence.list", "cursor": "not a cursor"})
    error = await ws.receive_json_from()
    assert (error["type"], error["code"]) == ("error", "invalid_page")
    await ws.disconnect()


async def test_a_small_rooms_welcome_lists_everyone_with_the_count() -> None:
    await presence_for().join("small", "device:d", "device", "d", hold=False)
    ws, welcome = await join("small")
    assert welcome["presence_count"] == 2
    assert sorted(m["kind"] for m in welcome["presence"]) == ["browser", "device"]
    await ws.disconnect()


async def test_an_open_socket_keeps_no_request_headers_in_its_scope() -> None:
    ws = WebsocketCommunicator(
        URLRouter(websocket_urlpatterns),
        "/ws/rooms/headers/?since=0",
        headers=[(b"user-agent", b"x" * 500), (b"origin", b"http://testserver")],
    )
    assert (await ws.connect())[0]
    assert (await ws.receive_json_from())["type"] == "welcome"
    (consumer,) = [
        o for o in gc.get_objects() if isinstance(o, RoomConsumer) and o.room == "headers"
    ]
    assert "headers" not in consumer.scope
    assert consumer.scope["path"] == "/ws/rooms/headers/"
    await ws.send_json_to({"message": "still here"})  # and it still works
    assert (await ws.receive_json_from())["message"] == "still here"
    await ws.disconnect()
