"""``make run``'s process: rungateway with an embedded broker and the in-memory channel layer."""

import asyncio
import json
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import pytest
from websockets.exceptions import ConnectionClosed

from tests.support.clients import (
    frames_within,
    mqtt_client,
    mqtt_messages_within,
    recv_json,
    ws_connect,
)
from tests.support.processes import Process, free_port, gateway_env, http_get, wait_for


class OneProcessGateway:
    def __init__(self, workdir: Path, *extra: str, **env_overrides: str) -> None:
        self.port, self.mqtt_port = free_port(), free_port()
        env = gateway_env(DATABASE_URL=f"sqlite:///{workdir / 'gateway.sqlite3'}", **env_overrides)
        argv = [
            sys.executable,
            "manage.py",
            "rungateway",
            "--port",
            str(self.port),
            "--mqtt-port",
            str(self.mqtt_port),
            *extra,
        ]
        self.process = Process("rungateway", argv, workdir / "rungateway.log", env=env)

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}"


@pytest.fixture
def one_process(tmp_path: Path) -> Iterator[OneProcessGateway]:
    gateway = OneProcessGateway(tmp_path)
    gateway.process.start()
    gateway.process.wait_log("subscribed to", timeout=30)
    yield gateway
    gateway.process.stop()


async def test_index_page_answers_and_rooms_work_over_the_embedded_broker(
    one_process: OneProcessGateway,
) -> None:
    status, body = await asyncio.to_thread(http_get, f"http://127.0.0.1:{one_process.port}/")
    assert status == 200
    assert "Enter a room" in body
    v311 = aiomqtt.ProtocolVersion.V311
    async with (
        ws_connect(one_process.ws, "greenhouse") as browser,
        mqtt_client(one_process.mqtt_port, protocol=v311) as device,
    ):
        await device.subscribe("rooms/greenhouse/#", qos=1)
        await device.publish("rooms/greenhouse/soil", b'{"moisture": 0.41}', qos=1)
        frame = await recv_json(browser)
        assert (frame["source"], frame["sender"], frame["message"]) == (
            "mqtt",
            "soil",
            {"moisture": 0.41},
        )
        await browser.send(json.dumps({"message": {"water": True}}))
        own = await recv_json(browser)
        assert own["message"] == {"water": True}
        received = await mqtt_messages_within(device, 3)
        gateway_messages = [m for m in received if m.topic.value == "rooms/greenhouse/gateway"]
        assert len(gateway_messages) == 1
        assert json.loads(gateway_messages[0].payload)["id"] == own["id"]  # type: ignore[arg-type]
        # MQTT 3.1.1 has no No Local: the bridge recognised its own publication and skipped it.
        assert await frames_within(browser, 1.0) == []


async def test_oversized_frames_close_with_1009(one_process: OneProcessGateway) -> None:
    async with ws_connect(one_process.ws, "greenhouse") as browser:
        await browser.send("x" * (64 * 1024 + 1))
        with pytest.raises(ConnectionClosed) as closed:
            await recv_json(browser)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1009


def test_sigterm_stops_the_gateway_cleanly(one_process: OneProcessGateway) -> None:
    one_process.process.signal(signal.SIGTERM)
    wait_for(lambda: not one_process.process.alive(), "rungateway to exit", timeout=20)
    assert one_process.process.popen is not None
    assert one_process.process.popen.returncode == 0, one_process.process.log()[-2000:]
    assert "bridge stopped" in one_process.process.log()


@pytest.mark.parametrize("taken", ["http", "mqtt"])
def test_a_port_already_taken_is_a_clear_start_up_error(
    one_process: OneProcessGateway, tmp_path: Path, taken: str
) -> None:
    second = OneProcessGateway(tmp_path / "second")
    (tmp_path / "second").mkdir()
    if taken == "http":
        second.port = one_process.port
        expected = f"port {one_process.port} on 127.0.0.1 (HTTP/WebSocket) is already in use"
    else:
        second.mqtt_port = one_process.mqtt_port
        expected = f"port {one_process.mqtt_port} on 127.0.0.1 (MQTT) is already in use"
    second.process.argv = [
        sys.executable,
        "manage.py",
        "rungateway",
        "--port",
        str(second.port),
        "--mqtt-port",
        str(second.mqtt_port),
    ]
    second.process.start()
    wait_for(lambda: not second.process.alive(), "the second gateway to give up", timeout=30)
    assert second.process.popen is not None
    assert second.process.popen.returncode != 0
    assert expected in second.process.log()
    assert "Traceback" not in second.process.log()
    assert one_process.process.alive()


def one_shot(port: int, topic: str, payload: bytes) -> None:
    """Connect, publish QoS 0, disconnect, as ``mosquitto_pub`` does (MQTT 3.1.1)."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv311)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        client.publish(topic, payload, qos=0).wait_for_publish(5)
        client.disconnect()
    finally:
        client.loop_stop()


async def welcome_holds(gateway: OneProcessGateway, room: str, topic: str) -> None:
    """Wait (10 s at most) until a browser joining ``room`` gets ``topic``'s retained state."""
    async with asyncio.timeout(10):
        while True:
            async with ws_connect(gateway.ws, room) as browser:
                welcome = browser.welcome  # type: ignore[attr-defined]
                if topic in {state["topic"] for state in welcome["retained"]}:
                    return
            await asyncio.sleep(0.1)


async def test_one_shot_publishers_retained_state_and_no_stray_retained_messages(
    one_process: OneProcessGateway,
) -> None:
    """What a user tries first: mosquitto_pub at QoS 0 while device states are retained."""
    v311 = aiomqtt.ProtocolVersion.V311
    async with mqtt_client(one_process.mqtt_port, protocol=v311) as device:
        for name in ("thermostat", "fridge", "oven"):
            await device.publish(f"rooms/kitchen/{name}", b'{"on": true}', qos=1, retain=True)
    # The broker's PUBACK comes before the bridge has stored the state: a browser that joins
    # at once may get it live rather than in its welcome. Later ones get it in the welcome.
    await welcome_holds(one_process, "kitchen", "rooms/kitchen/thermostat")
    async with asyncio.timeout(60):
        async with (
            ws_connect(one_process.ws, "kitchen") as browser,
            mqtt_client(one_process.mqtt_port, protocol=v311) as elsewhere,
        ):
            retained = {state["topic"] for state in browser.welcome["retained"]}  # type: ignore[attr-defined]
            assert "rooms/kitchen/thermostat" in retained
            await elsewhere.subscribe("elsewhere/#", qos=1)
            for index in range(50):
                payload = json.dumps({"n": index}).encode()
                await asyncio.to_thread(
                    one_shot, one_process.mqtt_port, "rooms/kitchen/sensor-1", payload
                )
            seen = []
            while len(seen) < 50:
                frame = await recv_json(browser)
                if frame.get("sender") == "sensor-1":
                    seen.append(frame["message"]["n"])
            # Fifty connections: MQTT orders messages within one, not across them.
            assert sorted(seen) == list(range(50))
            stray = await mqtt_messages_within(elsewhere, 1)
            assert [m.topic.value for m in stray] == []
