"""The HTTP API on real processes: every refusal has its status, and nothing makes it fail."""

import asyncio
import json
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error

from tests.support.clients import mqtt_client, mqtt_messages_within, recv_json, ws_connect
from tests.support.processes import Gateway, Mosquitto, django_shell, http_request

SETUP = """
from django.contrib.auth import get_user_model
from gateway.models import Room, RoomGrant, RoomPolicy
from gateway.tokens import issue_token
User = get_user_model()
writer, _ = User.objects.get_or_create(username="robot")
reader, _ = User.objects.get_or_create(username="viewer")
Room.objects.get_or_create(name="kitchen")
Room.objects.get_or_create(name="vault")
RoomPolicy.objects.get_or_create(room="vault", defaults={"private": True})
RoomGrant.objects.get_or_create(room="vault", user=reader, defaults={"access": "read"})
print(issue_token(writer, "api")[1], issue_token(reader, "api")[1])
"""


@pytest.fixture(scope="module")
def gateway_options() -> dict[str, Any]:
    return {
        # The schema's fuzzing asks anonymously, and must reach the views, not the throttle.
        "GATEWAY_API_ANONYMOUS_RATE": "10000",
        "GATEWAY_API_ANONYMOUS_BURST": "100000",
    }


@pytest.fixture(scope="module")
def tokens(gateway: Gateway) -> dict[str, str]:
    writer, reader = django_shell(SETUP, env=gateway.env).split()
    return {"writer": writer, "reader": reader}


def call(
    gateway: Gateway,
    method: str,
    path: str,
    *,
    token: str | None = None,
    body: bytes | None = None,
    content_type: str = "application/json",
) -> tuple[int, Any]:
    headers = {"Content-Type": content_type}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    status, text = http_request(method, f"{gateway.http}{path}", body=body, headers=headers)
    return status, json.loads(text) if text else None


JSON, KITCHEN = "application/json", "/api/rooms/kitchen/messages"
ONE = b'{"message": 1}'


@pytest.mark.parametrize(
    ("method", "path", "who", "body", "content_type", "status", "error"),
    [
        ("POST", KITCHEN, "writer", b"{not json", JSON, 400, "invalid_json"),
        ("POST", KITCHEN, "writer", b'{"text": 1}', JSON, 400, "invalid_body"),
        ("POST", KITCHEN, "writer", b'{"message": "%s"}' % (b"x" * 70_000), JSON, 413, "too_large"),
        ("POST", KITCHEN, "writer", ONE, "text/plain", 415, "unsupported_media_type"),
        ("POST", KITCHEN, None, ONE, JSON, 401, "unauthorised"),
        ("POST", KITCHEN, "wrong", ONE, JSON, 401, "unauthorised"),
        ("POST", "/api/rooms/vault/messages", "reader", ONE, JSON, 403, "forbidden"),
        ("POST", "/api/rooms/vault/messages", "writer", ONE, JSON, 404, "unknown_room"),
        ("POST", "/api/rooms/a%2Fb/messages", "writer", ONE, JSON, 400, "invalid_room"),
        ("GET", "/api/rooms/nowhere/messages", None, None, JSON, 404, "unknown_room"),
        # A room you may not read answers as one that does not exist.
        ("GET", "/api/rooms/vault/messages", None, None, JSON, 404, "unknown_room"),
        ("GET", "/api/rooms/vault/messages", "writer", None, JSON, 404, "unknown_room"),
        ("GET", f"{KITCHEN}?since=x", None, None, JSON, 400, "invalid_query"),
        ("GET", f"{KITCHEN}?since={'9' * 400}", None, None, JSON, 400, "invalid_query"),
        ("GET", f"{KITCHEN}?since=-1", None, None, JSON, 400, "invalid_query"),
        ("GET", f"{KITCHEN}?limit=0", None, None, JSON, 400, "invalid_query"),
        ("GET", "/api/rooms/", "wrong", None, JSON, 401, "unauthorised"),
        ("GET", "/api/nothing-here", None, None, JSON, 404, "not_found"),
    ],
)
def test_each_refusal_has_its_status(
    gateway: Gateway,
    tokens: dict[str, str],
    method: str,
    path: str,
    who: str | None,
    body: bytes | None,
    content_type: str,
    status: int,
    error: str,
) -> None:
    token = tokens.get(who, "gw_not-a-token") if who else None
    got, answer = call(gateway, method, path, token=token, body=body, content_type=content_type)
    assert (got, answer["error"]) == (status, error), answer


async def test_a_posted_message_reaches_browsers_mqtt_and_history(
    gateway: Gateway, broker: Mosquitto, tokens: dict[str, str]
) -> None:
    async with ws_connect(gateway.ws, "kitchen") as browser, mqtt_client(broker.port) as device:
        await device.subscribe("rooms/kitchen/gateway", qos=1)
        status, posted = await asyncio.to_thread(
            call, gateway, "POST", "/api/rooms/kitchen/messages", token=tokens["writer"],
            body=b'{"message": {"oven": 180}}',
        )  # fmt: skip
        assert status == 201
        assert (posted["source"], posted["sender"], posted["message"]) == (
            "http",
            "robot",
            {"oven": 180},
        )
        frame = await recv_json(browser)
        assert (frame["id"], frame["seq"]) == (posted["id"], posted["seq"])
        (published,) = await mqtt_messages_within(device, 2)
        assert json.loads(published.payload)["id"] == posted["id"]  # type: ignore[arg-type]
    status, page = await asyncio.to_thread(
        call, gateway, "GET", f"/api/rooms/kitchen/messages?since={posted['seq'] - 1}"
    )
    assert status == 200
    assert [m["id"] for m in page["messages"]] == [posted["id"]]


async def test_the_room_list_counts_people_devices_and_messages(
    gateway: Gateway, broker: Mosquitto, tokens: dict[str, str]
) -> None:
    async with ws_connect(gateway.ws, "counted"), ws_connect(gateway.ws, "counted"):
        async with mqtt_client(broker.port) as device:
            await device.publish("rooms/counted/pump-1/status", b"online", qos=1)
            for n in range(3):
                await device.publish("rooms/counted/pump-1", b"%d" % n, qos=1)
        await asyncio.sleep(1.0)  # let the worker hand the messages on
        _, listing = await asyncio.to_thread(call, gateway, "GET", "/api/rooms/")
    (room,) = [r for r in listing["rooms"] if r["name"] == "counted"]
    assert (room["people"], room["devices"], room["messages_per_minute"]) == (2, 1, 3)


def test_rooms_and_presence_follow_access(gateway: Gateway, tokens: dict[str, str]) -> None:
    _, anonymous = call(gateway, "GET", "/api/rooms/")
    _, reader = call(gateway, "GET", "/api/rooms/", token=tokens["reader"])
    assert "vault" not in [r["name"] for r in anonymous["rooms"]]
    assert "vault" in [r["name"] for r in reader["rooms"]]
    status, members = call(gateway, "GET", "/api/rooms/vault/presence", token=tokens["reader"])
    assert (status, members["presence"]) == (200, [])


def test_the_api_never_fails_whatever_it_is_sent(gateway: Gateway, tokens: dict[str, str]) -> None:
    schema = schemathesis.openapi.from_url(f"{gateway.http}/api/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 4
    for operation in operations:

        @given(case=operation.as_strategy(), room=st.sampled_from([None, "kitchen", "vault"]))
        @settings(
            max_examples=60, deadline=None, database=None,
            suppress_health_check=list(HealthCheck),
        )  # fmt: skip
        def never_a_server_error(case: Any, room: str | None) -> None:
            if room is not None and case.path_parameters:
                case.path_parameters["room"] = room  # reach past "no such room" too
            for headers in ({}, {"Authorization": f"Bearer {tokens['writer']}"}):
                response = case.call(headers=headers)
                case.validate_response(response, checks=[not_a_server_error])

        never_a_server_error()


def test_an_answer_is_paged_within_its_bytes_and_says_there_is_more(
    gateway: Gateway, tokens: dict[str, str]
) -> None:
    big = json.dumps({"message": "x" * 60_000}).encode()  # 60 KB a message: 20 make 1.2 MB
    seqs = []
    for _ in range(20):
        status, posted = call(
            gateway, "POST", "/api/rooms/pages/messages", token=tokens["writer"], body=big
        )
        assert status == 201, posted
        seqs.append(posted["seq"])
    status, page = call(
        gateway, "GET", "/api/rooms/pages/messages?since=0&limit=100", token=tokens["writer"]
    )
    assert status == 200
    got = [m["seq"] for m in page["messages"]]
    assert got == seqs[: len(got)]  # the oldest first, none skipped
    assert 1 <= len(got) < 20  # 1.2 MB do not fit in the 1 MiB an answer may hold
    assert page["more"] is True
    since, seen = got[-1], list(got)
    while page["more"]:
        status, page = call(
            gateway,
            "GET",
            f"/api/rooms/pages/messages?since={since}&limit=100",
            token=tokens["writer"],
        )
        seen += [m["seq"] for m in page["messages"]]
        since = seen[-1]
    assert seen == seqs
