"""Devices and browsers share rooms: real Mosquitto, Redis, daphne and bridge worker processes."""

import asyncio
import json
from pathlib import Path

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.conftest import start_gateway
from tests.support.clients import (
    frames_within,
    mqtt_client,
    mqtt_messages_within,
    read_until_closed,
    recv_json,
    ws_connect,
)
from tests.support.devices import Device
from tests.support.processes import Gateway, Mosquitto, Redis, gateway_env, http_get, manage
from tests.support.prometheus import parse_exposition, samples

QUIET = 1.0  # seconds in which nothing more may arrive


async def test_device_message_reaches_every_browser_in_its_room_and_no_other(
    gateway: Gateway, broker: Mosquitto
) -> None:
    async with (
        ws_connect(gateway.ws, "kitchen") as first,
        ws_connect(gateway.ws, "kitchen") as second,
        ws_connect(gateway.ws, "hall") as hall,
        mqtt_client(broker.port) as device,
    ):
        await device.publish("rooms/kitchen/sensor-1", b'{"t": 21.5}', qos=1)
        for ws in (first, second):
            frame = await recv_json(ws)
            assert frame["type"] == "message"
            assert frame["source"] == "mqtt"
            assert frame["room"] == "kitchen"
            assert frame["topic"] == "rooms/kitchen/sensor-1"
            assert frame["sender"] == "sensor-1"
            assert frame["message"] == {"t": 21.5}
            assert frame["id"]
            assert frame["ts"].endswith("Z")
        assert await frames_within(hall, QUIET) == []
        assert await frames_within(first, 0.2) == []


async def test_browser_message_reaches_the_room_and_mqtt_once_without_echo(
    gateway: Gateway, broker: Mosquitto
) -> None:
    async with (
        ws_connect(gateway.ws, "kitchen") as alice,
        ws_connect(gateway.ws, "kitchen") as bob,
        mqtt_client(broker.port) as device,
    ):
        await device.subscribe("rooms/kitchen/#", qos=1)
        await alice.send(json.dumps({"message": "hi"}))
        frame = await recv_json(bob)
        assert (frame["type"], frame["source"], frame["message"]) == ("message", "ws", "hi")
        assert frame["topic"] is None
        received = await mqtt_messages_within(device, 3)
        assert [m.topic.value for m in received] == ["rooms/kitchen/gateway"]
        envelope = json.loads(received[0].payload)  # type: ignore[arg-type]
        assert envelope["id"] == frame["id"]
        assert {k: envelope[k] for k in ("room", "source", "sender", "message")} == {
            "room": "kitchen",
            "source": "ws",
            "sender": frame["sender"],
            "message": "hi",
        }
        # The bridge saw its own publication come back and did not feed it into the room.
        assert await frames_within(bob, QUIET) == []
        alice_frames = await frames_within(alice, 0.2)
        assert [f["id"] for f in alice_frames] == [frame["id"]]  # the sender's own copy, once


async def test_a_burst_across_rooms_reaches_each_room_in_order_and_no_other(
    gateway: Gateway, broker: Mosquitto
) -> None:
    # Messages of several rooms that enter together travel together; two daphne processes
    # hold the sockets, so each process must get exactly its rooms' share.
    second = f"ws://127.0.0.1:{await asyncio.to_thread(gateway.start_web)}"
    rooms, count = ["burst-a", "burst-b", "burst-c"], 100
    async with (
        ws_connect(gateway.ws, "burst-a") as a1,
        ws_connect(second, "burst-a") as a2,
        ws_connect(second, "burst-b") as b,
        ws_connect(gateway.ws, "burst-c") as c,
        ws_connect(second, "burst-quiet") as quiet,
    ):
        with Device(broker.port, "burst") as device:
            for n in range(count):  # as fast as the client goes, round the rooms
                for room in rooms:
                    device.publish(f"rooms/{room}/d", json.dumps({"room": room, "n": n}).encode())

        async def received(ws: ClientConnection) -> list[tuple[str, int]]:
            got: list[tuple[str, int]] = []
            while len(got) < count:
                frame = await recv_json(ws, 20)
                got.append((frame["room"], frame["message"]["n"]))
            return got

        for ws, room in ((a1, "burst-a"), (a2, "burst-a"), (b, "burst-b"), (c, "burst-c")):
            got, expected = await received(ws), [(room, n) for n in range(count)]
            assert sorted(got) == expected  # each of its room's messages once, no other's
            if len(gateway.workers) == 1:  # several workers split a device's stream
                assert got == expected
        assert await frames_within(quiet, QUIET) == []


async def test_send_message_reaches_browsers_and_mqtt(gateway: Gateway, broker: Mosquitto) -> None:
    async with (
        ws_connect(gateway.ws, "porch") as browser,
        mqtt_client(broker.port) as device,
    ):
        await device.subscribe("rooms/porch/#", qos=1)
        result = await asyncio.to_thread(
            manage, "send_message", "porch", '{"light": "on"}', env=gateway.env
        )
        assert result.returncode == 0, result.stderr
        frame = await recv_json(browser)
        assert (frame["source"], frame["sender"], frame["message"]) == (
            "http",
            "admin",
            {"light": "on"},
        )
        received = await mqtt_messages_within(device, 3)
        assert [m.topic.value for m in received] == ["rooms/porch/gateway"]
        assert json.loads(received[0].payload)["message"] == {"light": "on"}  # type: ignore[arg-type]


def test_send_message_refuses_a_bad_room(gateway: Gateway) -> None:
    result = manage("send_message", "a/b", "hi", env=gateway.env)
    assert result.returncode != 0
    assert "invalid room name 'a/b'" in result.stderr


async def test_bad_frames_get_error_frames_and_the_socket_stays_usable(gateway: Gateway) -> None:
    async with ws_connect(gateway.ws, "lab") as ws:
        await ws.send("not json")
        assert (await recv_json(ws))["code"] == "invalid_json"
        await ws.send(json.dumps({"text": "no message key"}))
        assert (await recv_json(ws))["code"] == "invalid_frame"
        await ws.send(b"\x00\x01binary")
        error = await recv_json(ws)
        assert (error["type"], error["code"]) == ("error", "binary_frame")
        # A client-supplied type is never used: the frame is an ordinary message.
        await ws.send(json.dumps({"type": "websocket.disconnect", "message": "still here"}))
        frame = await recv_json(ws)
        assert (frame["type"], frame["message"]) == ("message", "still here")


async def test_a_frame_over_the_limit_closes_with_1009(gateway: Gateway) -> None:
    async with ws_connect(gateway.ws, "lab") as ws:
        await ws.send(json.dumps({"message": "x" * 60_000}))  # under 64 KiB: delivered
        assert len((await recv_json(ws))["message"]) == 60_000
        await ws.send(json.dumps({"message": "x" * 70_000}))
        with pytest.raises(ConnectionClosed) as closed:
            await recv_json(ws)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1009
    async with ws_connect(gateway.ws, "lab") as ws:  # the server goes on
        await ws.send(json.dumps({"message": "after"}))
        assert (await recv_json(ws))["message"] == "after"


async def test_a_welcome_larger_than_the_frame_limit_still_arrives(gateway: Gateway) -> None:
    # The limit is on what clients send; a welcome with two 60 KB messages is about 120 KB.
    async with ws_connect(gateway.ws, "bigwelcome") as ws:
        for n in range(2):
            await ws.send(json.dumps({"message": f"{n}" * 60_000}))
            assert len((await recv_json(ws))["message"]) == 60_000
    async with ws_connect(gateway.ws, "bigwelcome") as ws:
        assert [m["message"][0] for m in ws.welcome["messages"]] == ["0", "1"]


@pytest.mark.parametrize(
    "path",
    [
        *("a%2Fb", "a+b", "%23", "%24SYS", "nul%00", "ctl%01", "del%7F", "x" * 65, ""),
        *(".hidden", "-dash", "caf%C3%A9", "%EF%BF%BF", "lone%ED%A0%80", "bad%FF"),
    ],
)
async def test_bad_room_names_are_refused_before_accept(gateway: Gateway, path: str) -> None:
    with pytest.raises(InvalidStatus) as refused:
        async with ws_connect(gateway.ws, path):
            pass
    assert refused.value.response.status_code == 403


@pytest.mark.parametrize("origin", ["http://evil.example", "null", None])
async def test_a_foreign_or_missing_origin_is_refused(gateway: Gateway, origin: str | None) -> None:
    # A browser always sends Origin; without a bearer token, no Origin means no way to tell.
    url = f"{gateway.ws}/ws/rooms/kitchen/"
    with pytest.raises(InvalidStatus) as refused:
        async with connect(url, origin=origin, open_timeout=10):  # type: ignore[arg-type]
            pass
    assert refused.value.response.status_code == 403


async def test_non_utf8_payload_arrives_as_base64(gateway: Gateway, broker: Mosquitto) -> None:
    async with ws_connect(gateway.ws, "cellar") as ws, mqtt_client(broker.port) as device:
        await device.publish("rooms/cellar/cam", b"\xff\xfe\x00raw", qos=1)
        frame = await recv_json(ws)
        assert frame["encoding"] == "base64"
        assert frame["message"] == "//4AcmF3"


async def test_bad_device_topics_are_dropped_and_the_bridge_goes_on(
    gateway: Gateway, broker: Mosquitto
) -> None:
    async with ws_connect(gateway.ws, "attic") as ws, mqtt_client(broker.port) as device:
        await device.publish("rooms/.bad/x", b"1", qos=1)
        await device.publish("rooms/" + "y" * 65, b"2", qos=1)
        await device.publish("rooms/attic", b"plain text", qos=1)
        frame = await recv_json(ws)
        assert (frame["message"], frame["sender"]) == ("plain text", None)
    assert gateway.worker.alive()
    assert gateway.web.alive()
    assert "matches no rule or no valid room" in gateway.worker.log()


async def test_bridge_resubscribes_after_the_broker_restarts(
    tmp_path: Path, redis_server: Redis, database_url: str
) -> None:
    broker = Mosquitto(tmp_path).start()
    stack = start_gateway(tmp_path, broker, redis_server, database_url)
    try:
        broker.kill()
        broker.start()  # same port, no persistence: the subscription must be made again
        stack.worker.wait_log("subscribed to", timeout=1)  # the first one, from start-up
        loop = asyncio.get_running_loop()
        started = loop.time()
        async with ws_connect(stack.ws, "garage") as ws:
            frame = None
            while frame is None and loop.time() - started < 10:
                async with mqtt_client(broker.port) as device:
                    await device.publish("rooms/garage/door", b'{"open": true}', qos=1)
                frames = await frames_within(ws, 0.5)
                frame = frames[0] if frames else None
            assert frame is not None, stack.worker.log()[-2000:]
            assert frame["message"] == {"open": True}
            assert loop.time() - started < 10
        assert stack.worker.log().count("subscribed to") >= 2
    finally:
        stack.stop()
        broker.stop()


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({}, "MQTT_URL is not set"),
        ({"MQTT_URL": "http://broker:1883"}, "MQTT_URL"),
        ({"MQTT_URL": "mqtt://broker:notaport"}, "MQTT_URL"),
        ({"MQTT_URL": "mqtt://broker:1883", "MQTT_PROTOCOL": "4"}, "MQTT_PROTOCOL"),
        ({"MQTT_URL": "mqtt://127.0.0.1:1"}, "REDIS_URL is not set"),
        (
            {"MQTT_URL": "mqtt://127.0.0.1:1", "REDIS_URL": "redis://x", "GATEWAY_ID": "a b"},
            "GATEWAY_ID",
        ),
        (
            {
                "MQTT_URL": "mqtt://127.0.0.1:1",
                "REDIS_URL": "redis://x",
                "CHANNEL_GROUP_EXPIRY": "1",
            },
            "CHANNEL_GROUP_EXPIRY=1 is out of range",
        ),
    ],
)
def test_runworker_refuses_to_start_without_a_usable_setting(
    env: dict[str, str], named: str
) -> None:
    result = manage("runworker", "mqtt-bridge", env=gateway_env(**env), timeout=30)
    assert result.returncode != 0
    assert named in result.stderr
    assert "Traceback" not in result.stderr


async def test_a_socket_that_stops_reading_is_closed_and_the_room_keeps_flowing(
    gateway: Gateway, broker: Mosquitto
) -> None:
    count, pad = 2500, "x" * 8000  # 20 MB: past the kernel's buffers and the 1 MiB allowance
    # max_queue=1: once one frame waits unread, the client library stops reading the socket.
    async with (
        ws_connect(gateway.ws, "stall", max_queue=1) as stalled,
        ws_connect(gateway.ws, "stall", max_size=None) as reader,
        mqtt_client(broker.port) as device,
    ):
        before = closed_for_slowness(gateway)
        received: list[int] = []

        async def read_all() -> None:
            while len(received) < count:
                frame = await recv_json(reader, 20)
                if frame["type"] == "message":
                    received.append(frame["message"]["n"])

        reading = asyncio.create_task(read_all())
        for n in range(count):
            await device.publish("rooms/stall/meter", json.dumps({"n": n, "pad": pad}), qos=0)
            if n % 50 == 49:
                await asyncio.sleep(0.05)  # about 1,000 a second: what one bridge moves
        await asyncio.wait_for(reading, 60)
        assert received == list(range(count))  # the stalled socket held nobody back
        assert closed_for_slowness(gateway) == before + 1
        _, code = await read_until_closed(stalled, 30)
        # 1013, or no close frame at all when it was stuck behind the backlog and the
        # server gave up waiting for the close handshake
        assert code in (1013, None)


def closed_for_slowness(gateway: Gateway) -> float:
    text = http_get(f"{gateway.http}/metrics")[1]
    found = samples(parse_exposition(text), "gateway_ws_closed_total", reason="slow_consumer")
    return sum(sample.value for sample in found)
