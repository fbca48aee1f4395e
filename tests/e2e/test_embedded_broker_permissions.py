"""``make run``'s embedded broker decides as the decision table says, for real MQTT clients.

First its authorizer in-process, over every row of the table; then ``rungateway`` as a
subprocess, with the table's world in its database, browsers in its rooms and MQTT 3.1.1
clients: anonymous ones, the devices ``pump-7`` (write on ``plant``) and ``panel-1`` (read).
"""

import asyncio
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiomqtt
import pytest
from channels.db import database_sync_to_async
from websockets.asyncio.client import ClientConnection

from bridges.embedded_broker import GatewayAuthorizer, bridge_settings
from bridges.wire import Connect
from gateway.devices import revoke_device
from gateway.models import Device, RoomGrant
from gateway.mqtt_acl import Identity
from tests.e2e.test_rungateway import OneProcessGateway
from tests.support.clients import (
    frames_within,
    mqtt_client,
    mqtt_messages_within,
    recv_json,
    ws_connect,
)
from tests.support.decision_table import ROWS, Row, make_world
from tests.support.processes import django_shell

V311 = aiomqtt.ProtocolVersion.V311
BRIDGE = bridge_settings("127.0.0.1", 1883, gateway_id="gw")


# The authorizer in-process: the questions the broker asks, as it asks them.


def authorizer(*, anonymous: bool = True) -> GatewayAuthorizer:
    return GatewayAuthorizer(
        bridge_username=BRIDGE.username or "",
        bridge_password=BRIDGE.password or "",
        anonymous_mqtt=anonymous,
    )


def connect(who: str | None, secrets: dict[str, str], *, password: str | None = None) -> Connect:
    """The CONNECT of a client signing in as ``who`` (a device, "bridge", or None)."""
    username = None if who is None else (BRIDGE.username if who == "bridge" else who)
    if password is None and who is not None:
        password = BRIDGE.password if who == "bridge" else secrets.get(who, "not-its-secret")
    return Connect(5, f"{who or 'anonymous'}-client", True, 30, username,
                   None if password is None else password.encode(), None, [])  # fmt: skip


class Sessions:
    """What the authorizer's refresh reads of a broker: its sessions' identities; and kicks."""

    def __init__(self, authorizer: GatewayAuthorizer, *identities: Identity) -> None:
        self.authorizer = authorizer
        self.sessions = {str(i): SimpleNamespace(identity=i) for i in identities}
        self.kicked: list[Identity] = []

    def kick(self) -> int:
        gone = [
            s.identity
            for s in self.sessions.values()
            if not self.authorizer.may_connect(s.identity)
        ]
        self.kicked += gone
        return len(gone)


@pytest.fixture
def secrets() -> dict[str, str]:
    """The decision table's world in the test database; the devices' secrets."""
    return make_world()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("row", ROWS, ids=str)
async def test_the_authorizer_answers_every_row_of_the_decision_table(
    row: Row, secrets: dict[str, str]
) -> None:
    gate = authorizer()
    identity = await gate.authenticate(connect(row.who, secrets))
    if row.action == "connect":
        assert (identity is not None) is row.allow
        return
    assert identity is not None or not row.allow
    assert gate.may(identity, row.action, row.topic) is row.allow


@pytest.mark.django_db(transaction=True)
async def test_grants_and_revocations_apply_at_the_next_refresh(secrets: dict[str, str]) -> None:
    gate = authorizer()
    pump_8 = await gate.authenticate(connect("pump-8", secrets))
    assert pump_8 is not None
    broker = Sessions(gate, pump_8)
    assert not gate.may(pump_8, "subscribe", "rooms/plant/#")
    device = await database_sync_to_async(Device.objects.get)(name="pump-8")
    await database_sync_to_async(RoomGrant.objects.create)(
        room="plant", device=device, access="write"
    )
    assert not gate.may(pump_8, "subscribe", "rooms/plant/#")  # the ACL in hand, no query
    await gate.refresh(broker)  # type: ignore[arg-type]
    assert gate.may(pump_8, "subscribe", "rooms/plant/#")
    assert gate.may(pump_8, "publish", "rooms/plant/pump-8/t")
    assert broker.kicked == []

    await database_sync_to_async(revoke_device)(device)
    await gate.refresh(broker)  # type: ignore[arg-type]
    assert broker.kicked == [pump_8]
    assert not gate.may(pump_8, "publish", "rooms/plant/pump-8/t")
    assert not gate.may(pump_8, "receive", "rooms/plant/gateway")
    assert await gate.authenticate(connect("pump-8", secrets)) is None


@pytest.mark.django_db(transaction=True)
async def test_anonymous_mqtt_off_refuses_anonymous_clients(secrets: dict[str, str]) -> None:
    gate = authorizer(anonymous=False)
    assert await gate.authenticate(connect(None, secrets)) is None
    assert await gate.authenticate(connect("pump-7", secrets)) is not None


@pytest.mark.django_db(transaction=True)
async def test_the_bridge_needs_its_password(secrets: dict[str, str]) -> None:
    gate = authorizer()
    assert await gate.authenticate(connect("bridge", secrets)) is not None
    assert await gate.authenticate(connect("bridge", secrets, password="guess")) is None
    assert await gate.authenticate(connect("bridge", secrets, password="")) is None


# rungateway as a subprocess, with the table's world in its database.

SETUP = """
import json
from django.contrib.auth import get_user_model
from gateway.devices import add_device
from gateway.tokens import issue_token
from tests.support.decision_table import make_world
secrets = make_world()
_, secrets["pump-9"] = add_device("pump-9", {"plant": "write"})
root = get_user_model().objects.create_superuser("root", "root@example.invalid", None)
print(json.dumps({"secrets": secrets, "token": issue_token(root, "tests")[1]}))
"""
REVOKE = """
from gateway.devices import revoke_device
from gateway.models import Device
revoke_device(Device.objects.get(name="pump-9"))
"""
SYNC_SECONDS = 0.5  # MQTT_AUTH_SYNC_SECONDS of the gateway under test
QUIET = 1.5  # seconds to wait for what must not arrive, after a later message did


@dataclass
class World:
    gateway: OneProcessGateway
    secrets: dict[str, str]
    token: str

    def browser(self, room: str) -> Any:
        """A browser signed in as a superuser (API token): it may read and write any room."""
        bearer = {"Authorization": f"Bearer {self.token}"}
        return ws_connect(self.gateway.ws, room, additional_headers=bearer)

    def device(self, name: str | None, **kwargs: Any) -> aiomqtt.Client:
        """An MQTT 3.1.1 client signed in as device ``name``, or anonymous (None)."""
        if name is not None:
            kwargs.update(username=name, password=self.secrets[name])
        return mqtt_client(self.gateway.mqtt_port, protocol=V311, timeout=10, **kwargs)


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[World]:
    failed_before = request.session.testsfailed
    gateway = OneProcessGateway(
        tmp_path_factory.mktemp("embedded"), MQTT_AUTH_SYNC_SECONDS=str(SYNC_SECONDS)
    )
    gateway.process.start()
    try:
        gateway.process.wait_log("subscribed to", timeout=30)
        assert gateway.process.env is not None
        made = json.loads(django_shell(SETUP, env=gateway.process.env).splitlines()[-1])
        time.sleep(SYNC_SECONDS * 3)  # for the broker to read the new policies
        yield World(gateway, made["secrets"], made["token"])
    finally:
        gateway.process.stop()
        if request.session.testsfailed > failed_before:  # its log goes with the temporary dir
            print(
                f"\n--- rungateway's log ---\n{gateway.process.log()[-20_000:]}",
                file=sys.__stderr__,
            )


async def refused(client: aiomqtt.Client, topic_filter: str) -> bool:
    """Whether the broker refuses ``client``'s subscription (SUBACK 0x80)."""
    codes = await client.subscribe(topic_filter, qos=1)
    return all(getattr(code, "is_failure", code == 0x80) for code in codes)


async def said(browser: ClientConnection, message: Any) -> None:
    """``browser`` sends ``message`` to its room (and sees it come back)."""
    await browser.send(json.dumps({"message": message}))
    assert (await recv_json(browser))["message"] == message


def topics_of(messages: list[aiomqtt.Message]) -> list[tuple[str, Any]]:
    return [(m.topic.value, json.loads(m.payload)) for m in messages]  # type: ignore[arg-type]


async def test_anonymous_clients_get_nothing_of_a_private_room(world: World) -> None:
    async with (
        asyncio.timeout(60),
        world.browser("plant") as plant,
        world.browser("open") as open_room,
        world.device(None, identifier="anonymous-1") as anonymous,
    ):
        assert await refused(anonymous, "rooms/plant/#")
        assert await refused(anonymous, "rooms/plant/gateway")
        assert await refused(anonymous, "gateways/#")
        # What it publishes there is dropped: messages, retained state, presence.
        await anonymous.publish("rooms/plant/x/t", b'{"v": 1}', qos=1)
        await anonymous.publish("rooms/plant", b'{"v": 2}', qos=1)
        await anonymous.publish("rooms/plant/x/t", b'{"state": 3}', qos=1, retain=True)
        await anonymous.publish("rooms/plant/x/status", b'{"online": true}', qos=1, retain=True)
        await anonymous.publish("gateways/gw-bridge/status", b'{"online": false}', qos=1)
        # It may publish in a public room: that arriving means the others were handled.
        await anonymous.publish("rooms/open/x/t", b'{"v": 4}', qos=1)
        assert (await recv_json(open_room))["message"] == {"v": 4}
        assert await frames_within(plant, QUIET, presence=True) == []

        # A wildcard over every room is allowed, but nothing of the private room arrives.
        assert not await refused(anonymous, "rooms/+/gateway")
        await said(plant, {"for": "members"})
        await said(open_room, {"for": "anyone"})
        received = topics_of(await mqtt_messages_within(anonymous, QUIET))
        assert received
        assert {topic for topic, _ in received} == {"rooms/open/gateway"}

    async with asyncio.timeout(30), world.browser("plant") as late:
        assert late.welcome["retained"] == []  # type: ignore[attr-defined]
        members = [m["name"] for m in late.welcome["presence"]]  # type: ignore[attr-defined]
        assert "x" not in members


async def test_a_device_writes_under_its_own_name_where_it_may_write(world: World) -> None:
    async with (
        asyncio.timeout(60),
        world.browser("plant") as plant,
        world.browser("vault") as vault,
        world.device("panel-1") as panel,
        world.device("pump-7") as pump,
    ):
        assert not await refused(panel, "rooms/plant/#")
        await pump.publish("rooms/plant/pump-7/t", b'{"t": 1}', qos=1)
        frame = await recv_json(plant)
        assert (frame["source"], frame["sender"], frame["message"]) == ("mqtt", "pump-7", {"t": 1})

        await pump.publish("rooms/plant/pump-8/t", b'{"t": "as pump-8"}', qos=1)
        await pump.publish("rooms/vault/pump-7/t", b'{"t": "in vault"}', qos=1)
        await pump.publish("rooms/plant/gateway", b'{"t": "as the gateway"}', qos=1)
        await pump.publish("rooms/plant/pump-7/t", b'{"t": 2}', qos=1)
        assert (await recv_json(plant))["message"] == {"t": 2}
        assert await frames_within(plant, QUIET) == []
        assert await frames_within(vault, 0.1) == []
        # The reading device saw what pump-7 may write, and nothing else.
        heard = [
            m
            for m in topics_of(await mqtt_messages_within(panel, QUIET))
            if m[0] != "rooms/plant/gateway"
        ]
        assert heard == [("rooms/plant/pump-7/t", {"t": 1}), ("rooms/plant/pump-7/t", {"t": 2})]


async def test_a_reading_device_hears_its_room_and_nothing_of_another(world: World) -> None:
    async with (
        asyncio.timeout(60),
        world.browser("plant") as plant,
        world.browser("vault") as vault,
        world.device("panel-1") as panel,
    ):
        assert await refused(panel, "rooms/vault/#")
        assert not await refused(panel, "rooms/plant/gateway")
        assert not await refused(panel, "rooms/+/gateway")  # allowed; vault's never arrives
        await said(vault, {"secret": True})
        await said(plant, {"water": True})
        received = topics_of(await mqtt_messages_within(panel, QUIET))
        assert received
        assert {topic for topic, _ in received} == {"rooms/plant/gateway"}
        assert all(message["message"] == {"water": True} for _, message in received)
        await panel.publish("rooms/plant/panel-1/t", b'{"v": 1}', qos=1)  # read only
        assert await frames_within(plant, QUIET) == []


async def test_retained_messages_go_only_to_who_may_receive_them(world: World) -> None:
    async with asyncio.timeout(60):
        async with world.device("pump-7") as pump:
            await pump.publish("rooms/plant/pump-7/level", b'{"level": 3}', qos=1, retain=True)
            await pump.publish("rooms/lobby/pump-7/level", b'{"level": 4}', qos=1, retain=True)
        async with world.device(None, identifier="anonymous-2") as anonymous:
            assert not await refused(anonymous, "rooms/+/+/#")
            received = topics_of(await mqtt_messages_within(anonymous, QUIET))
        assert ("rooms/lobby/pump-7/level", {"level": 4}) in received
        assert all(not topic.startswith("rooms/plant/") for topic, _ in received), received
        async with world.device("panel-1") as panel:  # may read plant: gets its state
            assert not await refused(panel, "rooms/plant/#")
            received = topics_of(await mqtt_messages_within(panel, QUIET))
        assert ("rooms/plant/pump-7/level", {"level": 3}) in received


async def test_a_revoked_device_is_shut_out_within_seconds(world: World) -> None:
    async with (
        asyncio.timeout(60),
        world.browser("plant") as plant,
        world.device("pump-9") as revoked,
        world.device("pump-7") as pump,
    ):
        await revoked.publish("rooms/plant/pump-9/t", b'{"n": 1}', qos=1)
        assert (await recv_json(plant))["sender"] == "pump-9"
        assert world.gateway.process.env is not None
        await asyncio.to_thread(django_shell, REVOKE, env=world.gateway.process.env)
        with pytest.raises(aiomqtt.MqttError):  # noqa: PT012 - the disconnection ends the loop
            async with asyncio.timeout(10):
                async for _ in revoked.messages:
                    pass
        await pump.publish("rooms/plant/pump-7/t", b'{"after": "revocation"}', qos=1)
        assert (await recv_json(plant))["sender"] == "pump-7"
    with pytest.raises(aiomqtt.MqttError):
        async with asyncio.timeout(30), world.device("pump-9"):
            pass


def test_mqtt_anonymous_none_is_honoured(tmp_path: Path) -> None:
    gateway = OneProcessGateway(tmp_path, MQTT_ANONYMOUS="none")
    gateway.process.start()
    try:
        gateway.process.wait_log("subscribed to", timeout=30)

        async def connect() -> None:
            async with asyncio.timeout(30), mqtt_client(gateway.mqtt_port, protocol=V311):
                pass

        with pytest.raises(aiomqtt.MqttError):
            asyncio.run(connect())
        assert "refused MQTT client" in gateway.process.log()
    finally:
        gateway.process.stop()
