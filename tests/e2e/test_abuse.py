"""The bad-input catalogue: each abuse gets its exact answer, and the other rooms keep flowing.

Room names, non-JSON, binary and oversized frames, client-supplied types, private rooms, Origin,
revoked tokens and floods are in `test_rooms` and `test_access`; the rest are here.
"""

import asyncio
import contextlib
import json
from collections import Counter
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

from tests.support.clients import mqtt_client, read_until_closed, recv_json, ws_connect
from tests.support.devices import Device
from tests.support.processes import (
    Gateway,
    Mosquitto,
    django_shell,
    http_get,
    http_request,
    wait_for,
)
from tests.support.prometheus import parse_exposition, samples

MAX_PAYLOAD = 2048
RETAINED_TOPICS = 3

USER = """
from django.contrib.auth import get_user_model
from gateway.tokens import issue_token
user, _ = get_user_model().objects.get_or_create(username="{name}")
user.is_active = True
user.save()
print(issue_token(user, "abuse")[1])
"""
SESSION = """
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model
from django.contrib.sessions.backends.db import SessionStore
user, _ = get_user_model().objects.get_or_create(username="{name}")
session = SessionStore()
session[SESSION_KEY] = str(user.pk)
session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
session[HASH_SESSION_KEY] = user.get_session_auth_hash()
session.create()
print(session.session_key)
"""
SIGN_OUT = """
from django.contrib.sessions.backends.db import SessionStore
SessionStore("{key}").delete()
"""
DEACTIVATE = """
from django.contrib.auth import get_user_model
get_user_model().objects.filter(username="{name}").update(is_active=False)
"""


ANONYMOUS_PER_ADDRESS = 100  # every socket of these tests comes from 127.0.0.1
ANONYMOUS_API_BURST = 10


@pytest.fixture(scope="module")
def gateway_options() -> dict[str, Any]:
    """Small limits, so that crossing them takes a few messages."""
    return {
        "GATEWAY_WS_MAX_PER_USER": "2",
        "GATEWAY_WS_MAX_ANONYMOUS_PER_ADDRESS": str(ANONYMOUS_PER_ADDRESS),
        # Hundreds of handshakes at once, all worked on: the caps under test answer them
        # (the handshake limit has its own tests, in test_admission).
        "GATEWAY_WS_HANDSHAKES": "1000",
        "GATEWAY_MAX_PAYLOAD_BYTES": str(MAX_PAYLOAD),
        "RETAINED_MAX_TOPICS": str(RETAINED_TOPICS),
        "GATEWAY_API_ANONYMOUS_RATE": "0.1",
        "GATEWAY_API_ANONYMOUS_BURST": str(ANONYMOUS_API_BURST),
    }


async def shell(gateway: Gateway, code: str, **names: str) -> str:
    return await asyncio.to_thread(django_shell, code.format(**names), env=gateway.env)


async def assert_other_rooms_flow(gateway: Gateway, broker: Mosquitto) -> None:
    """A browser's message and a device's both still reach a room nobody abused."""
    async with ws_connect(gateway.ws, "bystanders") as ws, mqtt_client(broker.port) as device:
        await ws.send(json.dumps({"message": "still here"}))
        assert (await recv_json(ws))["message"] == "still here"
        await device.publish("rooms/bystanders/meter", b'{"kwh": 1}', qos=1)
        assert (await recv_json(ws))["message"] == {"kwh": 1}


async def send_invalid_utf8(ws: ClientConnection) -> None:
    """A text frame whose payload is not UTF-8 (a well-behaved client cannot send one)."""
    async with ws.send_context():
        ws.protocol.send_text(b'{"message": "\xff\xfe"}')


async def test_a_text_frame_that_is_not_utf8_closes_with_1007(
    gateway: Gateway, broker: Mosquitto
) -> None:
    async with ws_connect(gateway.ws, "babel") as ws:
        await send_invalid_utf8(ws)
        frames, code = await read_until_closed(ws)
    assert (frames, code) == ([], 1007)
    await assert_other_rooms_flow(gateway, broker)


@pytest.mark.parametrize(
    ("text", "detail"),
    [
        ('{"message": ' + "[" * 30_000 + "]" * 30_000 + "}", "nests too deeply"),
        ('{"message": ' + '{"a":' * 8_000 + "1" + "}" * 8_001, "nests too deeply"),
        ('{"message": 1e999}', "number out of range"),
        ('{"message": -1e400}', "number out of range"),
        ('{"message": 18446744073709551616}', "integer out of range"),  # 2**64
        ('{"message": ' + "9" * 50_000 + "}", "integer out of range"),
        ('{"message": NaN}', "NaN is not JSON"),
        ('{"message": [Infinity]}', "Infinity is not JSON"),
    ],
    ids=[
        *("deep-arrays", "deep-objects", "huge-float", "huge-negative", "2**64", "50k-digits"),
        *("nan", "infinity"),
    ],
)
async def test_json_no_browser_could_read_gets_invalid_json(
    gateway: Gateway, broker: Mosquitto, text: str, detail: str
) -> None:
    async with ws_connect(gateway.ws, "numbers") as ws:
        await ws.send(text)
        error = await recv_json(ws)
        assert (error["type"], error["code"]) == ("error", "invalid_json")
        assert detail in error["detail"]
        # The socket goes on: the largest integer the gateway carries still round-trips.
        await ws.send('{"message": 18446744073709551615}')
        assert (await recv_json(ws))["message"] == 2**64 - 1
    await assert_other_rooms_flow(gateway, broker)


async def test_too_many_sockets_for_one_user_get_1008_until_one_closes(
    gateway: Gateway, broker: Mosquitto
) -> None:
    token = await shell(gateway, USER, name="hoarder")
    url = f"{gateway.ws}/ws/rooms/hoard/"
    bearer = {"Authorization": f"Bearer {token}"}
    async with connect(url, additional_headers=bearer) as first:
        async with connect(url, additional_headers=bearer) as second:
            for ws in (first, second):
                assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "welcome"
            async with connect(url, additional_headers=bearer) as third:
                frames, code = await read_until_closed(third)
            assert code == 1008
            assert [(f["type"], f["code"]) for f in frames] == [("error", "too_many_sockets")]
            # The two admitted sockets are untouched.
            await first.send(json.dumps({"message": "mine"}))
            for ws in (first, second):
                assert (await recv_json(ws))["message"] == "mine"
        # One closed: a new one is admitted.
        async with connect(url, additional_headers=bearer) as again:
            assert json.loads(await asyncio.wait_for(again.recv(), 10))["type"] == "welcome"
    await assert_other_rooms_flow(gateway, broker)


@pytest.mark.parametrize("revocation", ["sign-out", "deactivated"])
async def test_a_session_that_ends_mid_connection_closes_its_socket_with_4401(
    gateway: Gateway, broker: Mosquitto, revocation: str
) -> None:
    name = f"visitor-{revocation}"
    key = await shell(gateway, SESSION, name=name)
    cookie = {"Cookie": f"sessionid={key}"}
    async with ws_connect(gateway.ws, "lobby", additional_headers=cookie) as ws:
        await ws.send(json.dumps({"message": "signed in"}))
        assert (await recv_json(ws))["sender"] == name
        await shell(
            gateway, SIGN_OUT if revocation == "sign-out" else DEACTIVATE, key=key, name=name
        )
        frames, code = await read_until_closed(ws)  # within a check interval (5 s)
    assert code == 4401
    assert [(f["code"], f["detail"]) for f in frames] == [
        ("unauthorised", "your session has ended")
    ]
    # The cookie no longer signs anybody in: the next socket is a guest's.
    async with ws_connect(gateway.ws, "lobby", additional_headers=cookie) as ws:
        await ws.send(json.dumps({"message": "who am I"}))
        assert (await recv_json(ws))["sender"].startswith("guest-")
    await assert_other_rooms_flow(gateway, broker)


async def test_device_payloads_that_are_bad_or_too_big_get_their_documented_answer(
    gateway: Gateway, broker: Mosquitto
) -> None:
    async with ws_connect(gateway.ws, "workshop") as ws, mqtt_client(broker.port) as device:
        await device.publish("rooms/workshop/lathe", b"x" * (MAX_PAYLOAD + 1), qos=1)
        await device.publish("rooms/workshop/lathe", b'{"rpm": 12', qos=1)  # not JSON: text
        frame = await recv_json(ws)  # the oversized one never arrives; the next does
        assert (frame["message"], frame.get("encoding")) == ('{"rpm": 12', None)
        await device.publish("rooms/workshop/lathe", b"\xc3\x28 broken", qos=1)
        frame = await recv_json(ws)
        assert (frame["encoding"], frame["message"]) == ("base64", "wyggYnJva2Vu")
        deep = b'{"deep": ' + b"[" * 1015 + b"]" * 1015 + b"}"  # too deep for JSON: text
        await device.publish("rooms/workshop/lathe", deep, qos=1)
        assert (await recv_json(ws))["message"] == deep.decode()
        await device.publish("rooms/workshop/lathe", b"y" * MAX_PAYLOAD, qos=1)  # at the limit
        assert (await recv_json(ws))["message"] == "y" * MAX_PAYLOAD
    assert gateway.worker.alive()
    assert f"{MAX_PAYLOAD + 1} bytes, over the {MAX_PAYLOAD} allowed" in gateway.worker.log()

    def counted() -> bool:  # the worker's numbers reach /metrics with its next heartbeat
        families = parse_exposition(http_get(f"{gateway.http}/metrics")[1])
        found = samples(families, "gateway_messages_dropped_total", reason="payload_too_big")
        return [sample.value for sample in found] == [1]

    await asyncio.to_thread(wait_for, counted, "the oversized payload's drop in /metrics", 10)
    await assert_other_rooms_flow(gateway, broker)


async def test_retained_spam_keeps_a_bounded_state_and_every_message_flows(
    gateway: Gateway, broker: Mosquitto
) -> None:
    topics = [f"rooms/spam/bot/{n}" for n in range(RETAINED_TOPICS + 5)]
    async with ws_connect(gateway.ws, "spam") as ws:
        with Device(broker.port, "spammer") as device:
            for n, topic in enumerate(topics):
                device.publish(topic, str(n).encode(), retain=True)
            assert device.wait_acked(len(topics))
        # Every one is delivered live, in order.
        assert [(await recv_json(ws))["message"] for _ in topics] == list(range(len(topics)))
        with Device(broker.port, "spammer") as device:  # a state already kept is updated
            device.publish(topics[0], b'"updated"', retain=True)
            assert device.wait_acked(1)
        assert (await recv_json(ws))["message"] == "updated"
    # A browser joining later gets the first topics' states, no more.
    async with ws_connect(gateway.ws, "spam") as late:
        states = {s["topic"]: s["message"] for s in late.welcome["retained"]}
    assert states == {topics[0]: "updated", topics[1]: 1, topics[2]: 2}
    assert "keeps no more retained states" in gateway.worker.log()
    await assert_other_rooms_flow(gateway, broker)


async def test_long_topics_and_unshowable_senders_are_dropped_and_counted(
    gateway: Gateway, broker: Mosquitto
) -> None:
    long_topic = "rooms/forge/anvil/" + "t" * 600
    async with ws_connect(gateway.ws, "forge") as ws, mqtt_client(broker.port) as device:
        await device.publish(long_topic, b'{"heat": 1}', qos=1, retain=True)
        await device.publish("rooms/forge/" + "s" * 65 + "/t", b'{"heat": 2}', qos=1)
        await device.publish("rooms/forge/bell\u200b/t", b'{"heat": 3}', qos=1)  # not printable
        await device.publish("rooms/forge/anvil/t", b'{"heat": 4}', qos=1)
        frame = await recv_json(ws)  # the three before never arrive; the next one does
        assert (frame["sender"], frame["message"]) == ("anvil", {"heat": 4})
    async with ws_connect(gateway.ws, "forge") as again:
        assert all(state["topic"] != long_topic for state in again.welcome["retained"])  # type: ignore[attr-defined]

    def counted() -> bool:
        families = parse_exposition(http_get(f"{gateway.http}/metrics")[1])
        too_long = samples(families, "gateway_messages_dropped_total", reason="topic_too_long")
        sender = samples(families, "gateway_messages_dropped_total", reason="invalid_sender")
        return [s.value for s in too_long] == [1] and [s.value for s in sender] == [2]

    await asyncio.to_thread(wait_for, counted, "the drops in /metrics", 10)
    await assert_other_rooms_flow(gateway, broker)


async def test_anonymous_sockets_past_the_cap_of_an_address_are_refused_and_counted(
    gateway: Gateway, broker: Mosquitto
) -> None:
    def refused_so_far() -> float:
        families = parse_exposition(http_get(f"{gateway.http}/metrics")[1])
        found = samples(families, "gateway_ws_refused_total", reason="too_many_sockets")
        return sum(sample.value for sample in found)

    before = await asyncio.to_thread(refused_so_far)
    url, origin = f"{gateway.ws}/ws/rooms/crowd/", gateway.http
    async with contextlib.AsyncExitStack() as stack:
        joining = [connect(url, origin=origin, open_timeout=30) for _ in range(600)]
        opened = await asyncio.gather(*map(stack.enter_async_context, joining))
        answers = await asyncio.gather(*(asyncio.wait_for(ws.recv(), 30) for ws in opened))
        kinds = Counter(json.loads(answer)["type"] for answer in answers)
        assert kinds == {"welcome": ANONYMOUS_PER_ADDRESS, "error": 600 - ANONYMOUS_PER_ADDRESS}
        for ws, answer in zip(opened, answers, strict=True):
            if json.loads(answer)["type"] == "error":
                assert json.loads(answer)["code"] == "too_many_sockets"
                _, code = await read_until_closed(ws)
                assert code == 1008
        await asyncio.gather(*(ws.close() for ws in opened))  # together: one by one is slow
    assert await asyncio.to_thread(refused_so_far) == before + 600 - ANONYMOUS_PER_ADDRESS
    # Every place was given back: a full house can come in again.
    async with contextlib.AsyncExitStack() as stack:
        rejoining = [ws_connect(gateway.ws, "crowd") for _ in range(ANONYMOUS_PER_ADDRESS)]
        again = await asyncio.gather(*map(stack.enter_async_context, rejoining))
        assert len(again) == ANONYMOUS_PER_ADDRESS
        await asyncio.gather(*(ws.close() for ws in again))
    await assert_other_rooms_flow(gateway, broker)


async def test_anonymous_api_reads_past_their_rate_get_429_and_signed_in_ones_do_not(
    gateway: Gateway,
) -> None:
    def get(path: str, **headers: str) -> tuple[int, str]:
        return http_request("GET", f"{gateway.http}{path}", headers=headers)

    answers = [
        (await asyncio.to_thread(get, "/api/rooms/"))[0] for _ in range(ANONYMOUS_API_BURST + 5)
    ]
    assert answers[:ANONYMOUS_API_BURST] == [200] * ANONYMOUS_API_BURST
    assert answers[ANONYMOUS_API_BURST:] == [429] * 5
    status, body = await asyncio.to_thread(get, "/api/rooms/")
    assert (status, json.loads(body)["error"]) == (429, "rate_limited")
    # A caller with a token is not counted against the address.
    token = await shell(gateway, USER, name="api-reader")
    assert (await asyncio.to_thread(get, "/api/rooms/", Authorization=f"Bearer {token}"))[0] == 200
    _, text = await asyncio.to_thread(http_get, f"{gateway.http}/metrics")
    assert samples(parse_exposition(text), "gateway_api_throttled_total")[0].value >= 6
