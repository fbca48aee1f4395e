"""Presence across processes: browsers on several daphne processes, and devices with a last will."""

import asyncio
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection

from tests.conftest import start_gateway
from tests.support.clients import frames_within, mqtt_client, recv_json, ws_connect
from tests.support.processes import Gateway, Mosquitto, Process, Redis, django_shell, http_get

TTL = 3.0  # PRESENCE_TTL_SECONDS for these tests


@pytest.fixture
def gateway(
    tmp_path: Path, mosquitto: Mosquitto, redis_server: Redis, database_url: str
) -> Iterator[Gateway]:
    stack = start_gateway(
        tmp_path, mosquitto, redis_server, database_url, PRESENCE_TTL_SECONDS=str(TTL)
    )
    yield stack
    stack.stop()


async def presence_event(ws: ClientConnection, event: str, name: str, within: float) -> float:
    """Seconds until a ``presence`` frame says ``name`` did ``event``; fails after ``within``."""
    started = time.monotonic()
    while (left := within - (time.monotonic() - started)) > 0:
        for frame in await frames_within(ws, min(left, 0.5), presence=True):
            member: dict[str, Any] = frame.get("member", {})
            if frame["type"] == "presence" and (frame["event"], member["name"]) == (event, name):
                return time.monotonic() - started
    raise AssertionError(f"no {event} of {name} within {within} s")


def names(welcome: dict[str, Any]) -> list[str]:
    return sorted(m["name"] for m in welcome["presence"])


async def test_presence_is_the_union_of_processes_and_a_killed_process_leaves(
    gateway: Gateway,
) -> None:
    other_port = gateway.start_web()
    async with ws_connect(gateway.ws, "lobby") as alice:
        me = next(m["name"] for m in alice.welcome["presence"])  # type: ignore[attr-defined]
        async with ws_connect(f"ws://127.0.0.1:{other_port}", "lobby") as bob:
            bob_name = next(
                m["name"]
                for m in bob.welcome["presence"]  # type: ignore[attr-defined]
                if m["name"] != me
            )
            assert names(bob.welcome) == sorted([me, bob_name])  # type: ignore[attr-defined]
            await presence_event(alice, "join", bob_name, 5)
            gateway.webs[1].kill()  # bob's process dies without saying goodbye
            took = await presence_event(alice, "leave", bob_name, TTL * 3)
        assert took <= TTL * 2
        async with ws_connect(gateway.ws, "lobby") as carol:
            assert bob_name not in names(carol.welcome)  # type: ignore[attr-defined]
            assert me in names(carol.welcome)  # type: ignore[attr-defined]


DEVICE = """
import sys, time, paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
port, room = int(sys.argv[1]), sys.argv[2]
client = paho.Client(CallbackAPIVersion.VERSION2, client_id="pump-7", protocol=paho.MQTTv5)
client.will_set(f"rooms/{room}/pump-7/status", b"offline", qos=1, retain=True)
client.connect("127.0.0.1", port, keepalive=2)
client.loop_start()
client.publish(f"rooms/{room}/pump-7/status", b"online", qos=1, retain=True).wait_for_publish()
print("online", flush=True)
time.sleep(600)
"""


async def test_a_killed_device_goes_offline_within_one_and_a_half_keepalives(
    gateway: Gateway, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    async with ws_connect(gateway.ws, "pumps") as browser:
        device = Process(
            "device",
            [sys.executable, "-c", DEVICE, str(mosquitto.port), "pumps"],
            tmp_path / "device.log",
        ).start()
        try:
            await asyncio.to_thread(device.wait_log, "online", 15)
            await presence_event(browser, "join", "pump-7", 10)
            device.kill()  # kill -9
            took = await presence_event(browser, "leave", "pump-7", 10)
        finally:
            device.stop()
        assert took <= 1.5 * 2  # keepalive 2 s
        # The status is a presence, not a chat message.
        assert all(f["type"] != "message" for f in await frames_within(browser, 0.5))
    async with ws_connect(gateway.ws, "pumps") as later:
        assert "pump-7" not in names(later.welcome)  # type: ignore[attr-defined]


REGISTER = """
from gateway.devices import add_device
from gateway.models import Device
if not Device.objects.filter(name="{name}").exists():
    add_device("{name}")
"""


async def joined(ws: ClientConnection, name: str, within: float) -> dict[str, Any]:
    """The member of the first presence frame that says ``name`` joined."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        frame = await recv_json(ws, max(0.0, deadline - loop.time()), presence=True)
        member: dict[str, Any] = frame.get("member", {})
        if frame["type"] == "presence" and (frame["event"], member.get("name")) == ("join", name):
            return member


async def test_a_registered_device_is_verified_in_presence_and_an_unknown_one_is_not(
    gateway: Gateway, mosquitto: Mosquitto
) -> None:
    await asyncio.to_thread(django_shell, REGISTER.format(name="verify-meter"), env=gateway.env)
    async with ws_connect(gateway.ws, "verify-lab") as browser:
        await browser.send(json.dumps({"message": "the room exists now"}))
        async with mqtt_client(mosquitto.port) as device:
            for name in ("verify-meter", "verify-stranger"):
                await device.publish(f"rooms/verify-lab/{name}/status", b"online", qos=1)
            registered = await joined(browser, "verify-meter", 10)
            stranger = await joined(browser, "verify-stranger", 10)
        assert (registered["kind"], registered["verified"]) == ("device", True)
        assert (stranger["kind"], stranger["verified"]) == ("device", False)
    async with ws_connect(gateway.ws, "verify-lab") as later:
        members = {m["name"]: m for m in later.welcome["presence"]}  # type: ignore[attr-defined]
        assert members["verify-meter"]["verified"] is True
        assert members["verify-stranger"]["verified"] is False
        (me,) = (m for m in members.values() if m["kind"] == "browser")
        assert "verified" not in me  # browsers have no such field
        status, text = await asyncio.to_thread(
            http_get, f"{gateway.http}/api/rooms/verify-lab/presence"
        )
    assert status == 200
    answered = {m["name"]: m.get("verified") for m in json.loads(text)["presence"]}
    assert (answered["verify-meter"], answered["verify-stranger"]) == (True, False)
