"""The embedded broker's sessions and refusals, in-process with real MQTT clients."""

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiomqtt
import pytest

from bridges.broker.server import Broker, Limits, OpenDoor
from bridges.wire import Connect

V5, V311 = aiomqtt.ProtocolVersion.V5, aiomqtt.ProtocolVersion.V311


class ByName(OpenDoor):
    """The user name is the identity; only alice may receive private/, nobody publishes secret/."""

    async def authenticate(self, connect: Connect) -> Any | None:
        return connect.username or "anonymous"

    def may(self, identity: Any, action: str, topic: str) -> bool:
        if topic.startswith("private/") and action != "publish":
            return bool(identity == "alice")
        return not (topic.startswith("secret/") and action == "publish")


@pytest.fixture
async def broker() -> AsyncIterator[Broker]:
    server = Broker(ByName(), Limits(max_sessions=3))
    await server.start("127.0.0.1", 0)
    yield server
    await server.close()


def client(broker: Broker, client_id: str, user: str | None = None, **kw: Any) -> aiomqtt.Client:
    return aiomqtt.Client(
        "127.0.0.1", broker.port, identifier=client_id, username=user, timeout=5, **kw
    )


async def heard(c: aiomqtt.Client, seconds: float) -> list[bytes]:
    got: list[bytes] = []

    async def read() -> None:
        async for message in c.messages:
            got.append(bytes(message.payload))  # type: ignore[arg-type]

    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(read(), seconds)
    return got


async def test_a_session_is_not_handed_to_another_identity(broker: Broker) -> None:
    async with client(broker, "alice-dev", "alice", protocol=V311, clean_session=False) as alice:
        await alice.subscribe("private/#", qos=1)
    async with client(broker, "pub", "pub") as publisher:
        await publisher.publish("private/diary", b"alice only", qos=1)
    async with client(broker, "alice-dev", "bob", protocol=V311, clean_session=False) as bob:
        assert await heard(bob, 0.5) == []
    async with client(broker, "alice-dev", "alice", protocol=V311, clean_session=False) as alice:
        assert await heard(alice, 0.5) == []  # bob's connection ended her session


async def test_a_refused_qos2_publish_does_not_swallow_the_next_one(broker: Broker) -> None:
    async with client(broker, "sub", protocol=V5) as sub, client(broker, "p", protocol=V5) as pub:
        await sub.subscribe("open/#", qos=2)
        await pub.publish("secret/x", b"refused", qos=2)
        await pub.publish("open/x", b"allowed", qos=2)
        assert await heard(sub, 0.5) == [b"allowed"]


async def test_a_full_session_table_forgets_the_longest_away(broker: Broker) -> None:
    for name in ("a", "b", "c"):  # three persistent sessions: the table is full
        async with client(broker, name, protocol=V311, clean_session=False):
            pass
        await asyncio.sleep(0.01)
    async with client(broker, "newcomer", protocol=V311):
        assert set(broker.sessions) == {"b", "c", "newcomer"}
