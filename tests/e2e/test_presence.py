"""Presence across processes: browsers on several daphne processes, and devices with a last will."""

import asyncio
import contextlib
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


def change_of(frame: dict[str, Any], event: str, name: str) -> dict[str, Any] | None:
    """The member a presence frame says did ``event`` ("join" or "leave"), if it does."""
    if frame["type"] != "presence":
        return None
    listed = frame.get("joined" if event == "join" else "left", [])
    return next((m for m in listed if m["name"] == name), None)


async def presence_event(ws: ClientConnection, event: str, name: str, within: float) -> float:
    """Seconds until a ``presence`` frame says ``name`` did ``event``; fails after ``within``."""
    started = time.monotonic()
    while (left := within - (time.monotonic() - started)) > 0:
        for frame in await frames_within(ws, min(left, 0.5), presence=True):
            if change_of(frame, event, name) is not None:
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


async def joined(ws: ClientConnection, names: list[str], within: float) -> dict[str, Any]:
    """The members that presence frames say joined, by name, once all ``names`` have."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    found: dict[str, Any] = {}
    while set(names) - set(found):
        frame = await recv_json(ws, max(0.0, deadline - loop.time()), presence=True)
        for name in names:
            member = change_of(frame, "join", name)
            if member is not None:
                found[name] = member
    return found


async def test_a_registered_device_is_verified_in_presence_and_an_unknown_one_is_not(
    gateway: Gateway, mosquitto: Mosquitto
) -> None:
    await asyncio.to_thread(django_shell, REGISTER.format(name="verify-meter"), env=gateway.env)
    async with ws_connect(gateway.ws, "verify-lab") as browser:
        await browser.send(json.dumps({"message": "the room exists now"}))
        async with mqtt_client(mosquitto.port) as device:
            for name in ("verify-meter", "verify-stranger"):
                await device.publish(f"rooms/verify-lab/{name}/status", b"online", qos=1)
            found = await joined(browser, ["verify-meter", "verify-stranger"], 10)
            registered, stranger = found["verify-meter"], found["verify-stranger"]
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


LIST_MAX = 10  # GATEWAY_PRESENCE_LIST_MAX for the contract test
INTERVAL, COUNT_INTERVAL = 0.1, 0.4


class View:
    """A room's membership as one socket knows it from its frames, as the room page keeps it."""

    def __init__(self, welcome: dict[str, Any]) -> None:
        self.count: int = welcome["presence_count"]
        listed = welcome["presence"]
        self.members: set[str] | None = None  # None: the count alone (a big room)
        if len(listed) == self.count:
            self.members = {m["key"] for m in listed}
        self.frames = 0

    def apply(self, frame: dict[str, Any]) -> None:
        if frame["type"] != "presence":
            return
        self.frames += 1
        self.count = frame["count"]
        if "members" in frame:
            self.members = {m["key"] for m in frame["members"]}
        elif "joined" not in frame:
            self.members = None
        elif self.members is not None:
            self.members -= {m["key"] for m in frame["left"]}
            self.members |= {m["key"] for m in frame["joined"]}


async def watch(ws: ClientConnection, view: View, seconds: float) -> None:
    for frame in await frames_within(ws, seconds, presence=True):
        view.apply(frame)


async def truth(base: str, room: str) -> set[str]:
    """Every member's key, read a page at a time from the API."""
    keys: list[str] = []
    cursor = "0"
    for _ in range(50):  # bounded: pages of 7
        status, text = await asyncio.to_thread(
            http_get, f"{base}/api/rooms/{room}/presence?limit=7&cursor={cursor}"
        )
        assert status == 200, text
        answer = json.loads(text)
        keys += [m["key"] for m in answer["presence"]]
        if answer["cursor"] is None:
            break
        cursor = answer["cursor"]
    return set(keys)


@pytest.fixture
def crowd(
    tmp_path: Path, mosquitto: Mosquitto, redis_server: Redis, database_url: str
) -> Iterator[Gateway]:
    stack = start_gateway(
        tmp_path,
        mosquitto,
        redis_server,
        database_url,
        GATEWAY_PRESENCE_LIST_MAX=str(LIST_MAX),
        GATEWAY_PRESENCE_INTERVAL=str(INTERVAL),
        GATEWAY_PRESENCE_COUNT_INTERVAL=str(COUNT_INTERVAL),
    )
    yield stack
    stack.stop()


async def test_every_sockets_view_converges_through_coalesced_changes_counts_and_pages(
    crowd: Gateway,
) -> None:
    """Two processes; sockets join and leave in bursts past the list's limit and back below
    it. Each watcher's view, kept from its frames alone, ends equal to the room's membership."""
    bases = [crowd.ws, f"ws://127.0.0.1:{crowd.start_web()}"]
    settle = COUNT_INTERVAL * 3
    async with contextlib.AsyncExitStack() as stack:
        watchers = [await stack.enter_async_context(ws_connect(b, "hall")) for b in bases]
        views = [View(w.welcome) for w in watchers]  # type: ignore[attr-defined]
        await watchers[0].send(json.dumps({"message": "the room exists now"}))  # for the API

        async def settled() -> None:
            pairs = zip(watchers, views, strict=True)
            await asyncio.gather(*(watch(w, v, settle) for w, v in pairs))

        async def open_sockets(n: int) -> list[contextlib.AsyncExitStack]:
            opened = []
            for i in range(n):
                inner = contextlib.AsyncExitStack()
                stack.push_async_callback(inner.aclose)  # closed at the end, if not before
                await inner.enter_async_context(ws_connect(bases[i % 2], "hall"))
                opened.append(inner)
            return opened

        # A small room: every change is listed.
        guests = await open_sockets(6)
        for inner in guests[:2]:
            await inner.aclose()
        await settled()
        members = await truth(crowd.http, "hall")
        assert len(members) == 6  # two watchers and four guests
        for view in views:
            assert (view.members, view.count) == (members, 6)

        # Past the limit: the count alone, and the list on request.
        crowd_sockets = await open_sockets(20)
        await settled()
        members = await truth(crowd.http, "hall")
        assert len(members) == 26
        for view in views:
            assert (view.members, view.count) == (None, 26)
        frames_before = [v.frames for v in views]

        # Back below it: the whole list again, then changes.
        for inner in crowd_sockets[:18]:
            await inner.aclose()
        await settled()
        members = await truth(crowd.http, "hall")
        assert len(members) == 8
        for view in views:
            assert (view.members, view.count) == (members, 8)
        # 18 leaves in a burst were a few frames, not 18.
        assert all(v.frames - before < 18 for v, before in zip(views, frames_before, strict=True))
