"""Mosquitto with the dynamic security plugin enforces the gateway's decisions.

A real broker, a bridge worker keeping the plugin in step (``MQTT_AUTH=dynsec``) and real MQTT
clients: every row of the decision table, then what devices and browsers notice.
"""

import asyncio
import glob
import json
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from tests.conftest import start_gateway
from tests.support.clients import recv_json, ws_connect
from tests.support.decision_table import ROWS, Row
from tests.support.processes import (
    Gateway,
    Mosquitto,
    Redis,
    binary,
    django_shell,
    gateway_env,
    manage,
    wait_for,
)

ADMIN, ADMIN_PASSWORD = "gw-admin", "admin-secret-for-tests"
WORLD = """
import json
from tests.support.decision_table import make_world
print(json.dumps(make_world()))
"""
BROWSER = """
from django.contrib.auth import get_user_model
from gateway.tokens import issue_token
boss = get_user_model().objects.create_superuser("boss", password=None)
print(issue_token(boss, "tests")[1])
"""


def dynsec_plugin() -> str:
    found = glob.glob("/usr/lib/*/mosquitto_dynamic_security.so") + glob.glob(
        "/usr/lib/mosquitto_dynamic_security.so"
    )
    if not found:
        raise RuntimeError("Debian's mosquitto ships mosquitto_dynamic_security.so: install it")
    return found[0]


def dynsec_broker(workdir: Path, *, anonymous: bool = True) -> Mosquitto:
    """Mosquitto with the plugin, its admin made as the compose file's start-up makes it."""
    config = workdir / "dynamic-security.json"
    subprocess.run(
        [binary("mosquitto_ctrl"), "dynsec", "init", str(config), ADMIN, ADMIN_PASSWORD],
        check=True,
        capture_output=True,
    )
    return Mosquitto(
        workdir,
        extra=(
            f"allow_anonymous {'true' if anonymous else 'false'}\n"
            f"plugin {dynsec_plugin()}\nplugin_opt_config_file {config}\n"
        ),
    ).start()


class Stack:
    def __init__(self, gateway: Gateway, broker: Mosquitto, secrets: dict[str, str], token: str):
        self.gateway, self.broker, self.secrets, self.token = gateway, broker, secrets, token

    def credentials(self, who: str | None) -> dict[str, Any]:
        if who is None:
            return {}
        if who == "bridge":
            return {"username": ADMIN, "password": ADMIN_PASSWORD}
        return {"username": who, "password": self.secrets.get(who, "not-the-secret")}

    def client(self, who: str | None, **kwargs: Any) -> aiomqtt.Client:
        return aiomqtt.Client(
            "127.0.0.1",
            self.broker.port,
            identifier=f"t-{who or 'anon'}-{uuid.uuid4().hex[:6]}",
            protocol=aiomqtt.ProtocolVersion.V5,
            timeout=10,
            **self.credentials(who),
            **kwargs,
        )


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, redis_server: Redis) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("dynsec")
    broker = dynsec_broker(workdir)
    database_url = f"sqlite:///{workdir / 'gateway.sqlite3'}"
    env = gateway_env(
        DATABASE_URL=database_url,
        MQTT_URL=f"mqtt://{ADMIN}:{ADMIN_PASSWORD}@127.0.0.1:{broker.port}",
        MQTT_AUTH="dynsec",
    )
    assert manage("migrate", "--noinput", env=env).returncode == 0
    secrets = json.loads(django_shell(WORLD, env=env).splitlines()[-1])
    token = django_shell(BROWSER, env=env).splitlines()[-1]
    gateway = start_gateway(
        workdir,
        broker,
        redis_server,
        database_url,
        MQTT_URL=env["MQTT_URL"],
        MQTT_AUTH="dynsec",
        MQTT_ANONYMOUS="public",
        MQTT_AUTH_SYNC_SECONDS="0.5",
    )
    try:
        worker = gateway.workers[0]
        wait_for(lambda: "dynamic security in step" in worker.log(), "the first sync", 20)
        yield Stack(gateway, broker, secrets, token)
    finally:
        gateway.stop()
        broker.stop()


async def can_connect(stack: Stack, who: str | None) -> bool:
    try:
        async with stack.client(who):
            return True
    except aiomqtt.MqttError:
        return False


async def subscribe_granted(client: aiomqtt.Client, topic: str) -> bool:
    granted = await client.subscribe(topic, qos=1)
    return all(int(getattr(code, "value", code)) < 0x80 for code in granted)


@asynccontextmanager
async def observer(stack: Stack) -> AsyncIterator[aiomqtt.Client]:
    """The administrator, who may read everything, subscribed to every room."""
    async with stack.client("bridge") as admin:
        await admin.subscribe("rooms/#", qos=1)
        await admin.subscribe("gateways/#", qos=1)
        yield admin


async def collect(client: aiomqtt.Client, seconds: float) -> list[aiomqtt.Message]:
    got: list[aiomqtt.Message] = []

    async def read() -> None:
        async for message in client.messages:
            got.append(message)

    with suppress(TimeoutError):
        await asyncio.wait_for(read(), seconds)
    return got


async def ask_broker(stack: Stack, rows: list[Row]) -> dict[Row, bool]:
    """What the broker lets each row's client do, found by doing it."""
    answers: dict[Row, bool] = {}
    for row in rows:
        if row.action == "connect":
            answers[row] = await can_connect(stack, row.who)
    async with AsyncExitStack() as clients, observer(stack) as admin:
        marks: dict[str, Row] = {}
        for row in rows:
            if row.action == "connect" or not await can_connect(stack, row.who):
                answers.setdefault(row, False)
                continue
            client = await clients.enter_async_context(stack.client(row.who))
            if row.action == "subscribe":
                answers[row] = await subscribe_granted(client, row.topic)
            elif row.action == "publish":
                mark = uuid.uuid4().hex
                marks[mark] = row
                await client.publish(row.topic, mark.encode(), qos=1)
            elif row.action == "receive":
                await client.subscribe(row.topic, qos=1)
                mark = uuid.uuid4().hex
                await admin.publish(row.topic, mark.encode(), qos=1)
                seen = [m.payload for m in await collect(client, 0.5)]
                answers[row] = mark.encode() in seen
        arrived = {bytes(m.payload).decode(errors="replace") for m in await collect(admin, 1.5)}
        for mark, row in marks.items():
            answers[row] = mark in arrived
    return answers


async def test_mosquitto_answers_every_row_of_the_decision_table(stack: Stack) -> None:
    answers = await ask_broker(stack, list(ROWS))
    wrong = [f"{row}: broker {'allowed' if answers[row] else 'denied'}" for row in ROWS
             if answers[row] is not row.allow]  # fmt: skip
    assert not wrong, "\n".join(wrong)


async def test_a_device_writes_as_itself_into_rooms_it_may_write(stack: Stack) -> None:
    gateway = stack.gateway
    async with (
        ws_connect(gateway.ws, "plant", additional_headers=bearer(stack.token)) as browser,
        stack.client("pump-7") as pump,
    ):
        run = uuid.uuid4().hex
        for topic in ("rooms/plant/pump-8/t", "rooms/vault/pump-7/t", "rooms/plant/pump-7/t"):
            await pump.publish(topic, json.dumps({"from": topic, "run": run}).encode(), qos=1)
        frame = await recv_frame_of(browser, "message")
        mine = {"from": "rooms/plant/pump-7/t", "run": run}
        assert (frame["sender"], frame["message"]) == ("pump-7", mine)
    async with ws_connect(gateway.ws, "vault", additional_headers=bearer(stack.token)) as vault:
        welcome = vault.welcome  # type: ignore[attr-defined]
        assert all(run not in json.dumps(m["message"]) for m in welcome["messages"])


async def test_anonymous_clients_cannot_reach_a_private_room(stack: Stack) -> None:
    gateway = stack.gateway
    async with ws_connect(gateway.ws, "plant", additional_headers=bearer(stack.token)) as browser:
        async with stack.client(None) as stranger:
            assert not await subscribe_granted(stranger, "rooms/plant/#")
            await stranger.publish("rooms/plant/intruder/t", b'{"bad": 1}', qos=1)
            await stranger.publish("rooms/plant/intruder/status", b"online", qos=1, retain=True)
            await stranger.publish("rooms/plant/intruder/state", b"x", qos=1, retain=True)
            await stranger.publish("gateways/x/status", b"{}", qos=1, retain=True)
        async with stack.client("pump-7") as pump:
            await pump.publish("rooms/plant/pump-7/t", b'{"ok": 1}', qos=1)
        frame = await recv_frame_of(browser, "message")
        assert frame["sender"] == "pump-7"  # nothing of the stranger came first
    async with ws_connect(gateway.ws, "plant", additional_headers=bearer(stack.token)) as again:
        welcome = again.welcome  # type: ignore[attr-defined]
        senders = {m["sender"] for m in welcome["messages"]}
        assert "pump-7" in senders, "the device's messages are in the history"
        assert "intruder" not in senders
        assert welcome["retained"] == []
        assert all(m["name"] != "intruder" for m in welcome["presence"])


async def test_a_reading_device_hears_the_room_and_nothing_of_others(stack: Stack) -> None:
    gateway = stack.gateway
    async with stack.client("panel-1") as panel:
        assert await subscribe_granted(panel, "rooms/plant/gateway")
        assert not await subscribe_granted(panel, "rooms/vault/#")
        headers = bearer(stack.token)
        async with (
            ws_connect(gateway.ws, "plant", additional_headers=headers) as plant,
            ws_connect(gateway.ws, "vault", additional_headers=headers) as vault,
        ):
            await vault.send(json.dumps({"message": "secret"}))
            await plant.send(json.dumps({"message": "hello devices"}))
            got = await collect(panel, 2.0)
        envelopes = [json.loads(m.payload) for m in got]  # type: ignore[arg-type]
        assert [(e["room"], e["message"]) for e in envelopes] == [("plant", "hello devices")]


async def test_revoking_a_device_disconnects_it_and_a_grant_reaches_a_connected_one(
    stack: Stack,
) -> None:
    env = stack.gateway.env
    added = manage("add_device", "valve-2", "--grant", "plant:write", env=env)
    assert added.returncode == 0, added.stderr
    stack.secrets["valve-2"] = added.stdout.strip().splitlines()[-1]
    await wait_until(lambda: can_connect(stack, "valve-2"), "valve-2 to be let in", 10)
    async with stack.client("valve-2") as valve:
        revoked = manage("revoke_device", "valve-2", env=env)
        assert revoked.returncode == 0, revoked.stderr
        with pytest.raises(aiomqtt.MqttError):  # noqa: PT012 - the disconnection ends the loop
            async with asyncio.timeout(10):
                async for _ in valve.messages:
                    pass
    assert not await can_connect(stack, "valve-2")

    async with stack.client("panel-1") as panel:
        assert not await subscribe_granted(panel, "rooms/vault/gateway")
    granted = manage("grant", "vault", "--device", "panel-1", "--read", env=env)
    assert granted.returncode == 0, granted.stderr

    async def may_subscribe() -> bool:
        async with stack.client("panel-1") as panel:
            return await subscribe_granted(panel, "rooms/vault/gateway")

    await wait_until(may_subscribe, "panel-1 to be let into vault", 10)
    manage("grant", "vault", "--device", "panel-1", "--none", env=env)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def recv_frame_of(ws: Any, kind: str) -> dict[str, Any]:
    while True:
        frame = await recv_json(ws)
        if frame.get("type") == kind:
            return frame


async def wait_until(check: Any, what: str, seconds: float) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"timed out after {seconds} s waiting for {what}")
        await asyncio.sleep(0.2)
