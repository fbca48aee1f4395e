"""The gateway's Redis client through a failover, on a real master, replica and three Sentinels.

Redis replicates asynchronously: a replica promoted after the master died may lack the master's
last writes, counters included. Seqs must still never repeat (a browser may have seen the lost
ones), and what the bridge acknowledges to the broker must be on the replica first.
"""

import asyncio
import gc
import os
import signal
import time
import uuid
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from channels_redis.core import RedisChannelLayer
from redis.asyncio import Redis

from gateway import metrics
from gateway.envelope import Envelope, new_envelope
from gateway.history import RedisWindow
from gateway.presence import Member, RedisStore
from gateway.shared import (
    EPOCH_SKIP,
    RedisTarget,
    ReplicaWait,
    epoch_check,
    epoch_keys,
    parse_sentinels,
)
from gateway.transport import RedisTransport
from tests.support.processes import Redis as RedisServer
from tests.support.processes import RedisReplicated, wait_for


@pytest.fixture
def replicated(tmp_path: Path) -> Iterator[RedisReplicated]:
    servers = RedisReplicated(tmp_path).start()
    yield servers
    servers.stop()


@pytest.fixture
async def client(replicated: RedisReplicated) -> AsyncIterator[Redis]:
    target = RedisTarget(
        "redis://",
        sentinels=tuple(("127.0.0.1", node.port) for node in replicated.sentinels),
        master=replicated.MASTER,
    )
    client = target.connect(epoch_check(PREFIX))
    yield client
    await client.aclose(close_connection_pool=True)


PREFIX = f"test:{uuid.uuid4().hex}:"


def envelope(room: str, text: str) -> Envelope:
    return new_envelope(room=room, message=text, source="mqtt", sender="d", gateway="g")


async def append(window: RedisWindow, room: str, *texts: str) -> list[int | None]:
    return await window.append([envelope(room, text) for text in texts])


async def until_written(window: RedisWindow, room: str, text: str) -> int | None:
    """Append ``text`` once the promoted replica takes writes; its seq."""
    for _ in range(300):  # bounded: 30 s at most
        try:
            (seq,) = await append(window, room, text)
            return seq
        except Exception:  # the old master's connections fail until the Sentinels promote
            await asyncio.sleep(0.1)
    raise AssertionError("no master took writes within 30 s of the failover")


async def lose_with_the_master(
    replicated: RedisReplicated, client: Redis, writes: Callable[[], Awaitable[None]]
) -> None:
    """Make ``writes`` on the master alone, then kill it: the replica is promoted without them."""
    replica = next(node for node in replicated.servers if node.port != replicated.master_port())
    assert replica.process is not None
    os.kill(replica.process.pid, signal.SIGSTOP)  # it cannot link up again for now
    try:
        await client.client_kill_filter(_type="replica")  # the link is cut: what follows stays
        await writes()
        replicated.kill_master()
    finally:
        os.kill(replica.process.pid, signal.SIGCONT)
    wait_for(lambda: replicated.master_port() == replica.port, "the replica's promotion", 30)


async def test_seqs_lost_with_the_master_are_never_given_again(
    replicated: RedisReplicated, client: Redis
) -> None:
    window = RedisWindow(client, prefix=PREFIX, window=100, ttl_seconds=600)
    await window.seed("kitchen", 0)
    assert await append(window, "kitchen", "one", "two", "three") == [1, 2, 3]
    assert await client.wait(1, 5000) == 1  # the replica has 1-3

    async def unreplicated() -> None:
        # Numbered by the master only: browsers may have seen 4 and 5, then the master dies.
        assert await append(window, "kitchen", "four", "five") == [4, 5]

    await lose_with_the_master(replicated, client, unreplicated)

    after = await until_written(window, "kitchen", "six")
    # The promoted replica never had 4 and 5; the room's seq skips past them instead.
    assert after == 3 + EPOCH_SKIP + 1
    kept = await window.after("kitchen", 0, 100)
    assert [(m["message"], m["seq"]) for m in kept] == [
        ("one", 1),
        ("two", 2),
        ("three", 3),
        ("six", after),
    ]
    # A room first written after the failover starts at 1 all the same.
    await window.seed("garden", 0)
    assert await append(window, "garden", "first") == [1]


async def test_presence_versions_lost_with_the_master_are_never_given_again(
    replicated: RedisReplicated, client: Redis
) -> None:
    # Processes ignore a presence change older than the newest they saw: after a failover a
    # room's changes must carry newer versions, or its count would stand still.
    store = RedisStore(client, prefix=f"{PREFIX}presence:", epoch_key=epoch_keys(PREFIX)[1])

    async def join(key: str) -> int:
        member = Member(key=key, kind="browser", name=key, since="2026-12-02T10:00:00.000Z")
        _, change = await store.add("hall", member, time.time() + 60, 100)
        assert change is not None
        return change.version

    first = await join("a")
    assert await client.wait(1, 5000) == 1
    seen: list[int] = []

    async def unreplicated() -> None:
        seen.append(await join("b"))  # a version processes saw, then lost with the master

    await lose_with_the_master(replicated, client, unreplicated)
    for _ in range(300):  # bounded: until the promoted replica takes writes
        try:
            after = await join("c")
            break
        except Exception:
            await asyncio.sleep(0.1)
    else:
        raise AssertionError("no master took writes within 30 s of the failover")
    assert seen == [first + 1]
    assert after > seen[0]
    assert after == first + EPOCH_SKIP + 1


async def test_an_acknowledged_device_message_is_on_the_replica_first(
    replicated: RedisReplicated, client: Redis
) -> None:
    window = RedisWindow(client, prefix=PREFIX, window=100, ttl_seconds=600)
    rooms = RedisTransport(
        client,
        prefix=PREFIX,
        capacity=100,
        membership_seconds=60,
        replica_wait=ReplicaWait(300),
    )
    await window.seed("porch", 0)
    once = {"m1": False}
    message = new_envelope(
        room="porch", message="hi", source="mqtt", sender="d", gateway="g", message_id="m1"
    )
    timeouts = metrics.get("redis_replica_wait_timeouts")
    assert await rooms.append_and_deliver(window, [message], once) == [1]
    assert metrics.get("redis_replica_wait_timeouts") == timeouts  # the replica confirmed it

    replica = next(node for node in replicated.servers if node.port != replicated.master_port())
    assert replica.process is not None
    os.kill(replica.process.pid, signal.SIGSTOP)
    try:
        second = new_envelope(
            room="porch", message="ho", source="mqtt", sender="d", gateway="g", message_id="m2"
        )
        # No replica confirms within the wait: the message still goes (the broker is not kept
        # waiting for ever), and the counter says it went unconfirmed.
        assert await rooms.append_and_deliver(window, [second], {"m2": False}) == [2]
        assert metrics.get("redis_replica_wait_timeouts") == timeouts + 1
    finally:
        os.kill(replica.process.pid, signal.SIGCONT)


async def test_a_master_without_replicas_is_never_waited_for(redis_server: RedisServer) -> None:
    client = RedisTarget(redis_server.url).connect()
    try:
        wait = ReplicaWait(60_000)
        timeouts = metrics.get("redis_replica_wait_timeouts")
        assert not await wait.wanted(client)
        assert await wait.run(client, ("PING",))
        # Not waited for: a WAIT would have timed out after a minute and been counted.
        assert metrics.get("redis_replica_wait_timeouts") == timeouts
    finally:
        await client.aclose(close_connection_pool=True)


async def test_passwords_and_tls_hold_through_the_sentinels_and_a_failover(
    tmp_path: Path,
) -> None:
    """Servers and Sentinels on TLS only, each asking for its password: the gateway's client,
    its blocking client and the channel layer reach the master, and the new one after it."""
    secure = RedisReplicated(tmp_path, secure=True).start()
    env = secure.env()
    target = RedisTarget(
        env["REDIS_URL"],
        sentinels=parse_sentinels(env["REDIS_SENTINELS"]),
        master=env["REDIS_SENTINEL_MASTER"],
        sentinel_password=env["REDIS_SENTINEL_PASSWORD"],
    )
    client = target.connect(epoch_check(PREFIX))
    layer = RedisChannelLayer(hosts=[target.layer_host()])
    blocking = target.connect_sync()
    try:
        window = RedisWindow(client, prefix=PREFIX, window=100, ttl_seconds=600)
        await window.seed("vault", 0)
        assert await append(window, "vault", "before") == [1]
        await layer.send("bridge-check", {"type": "check", "n": 1})
        assert (await layer.receive("bridge-check"))["n"] == 1
        assert await asyncio.to_thread(blocking.ping)
        await asyncio.sleep(0.5)  # the layer drops its backup of what it handed out

        old = await asyncio.to_thread(secure.kill_master)
        await asyncio.to_thread(
            wait_for, lambda: secure.master_port() not in (None, old), "the promotion", 30
        )
        assert (await until_written(window, "vault", "after") or 0) > 1
        for _ in range(100):  # bounded: the layer's pool finds the new master on its next use
            try:
                await layer.send("bridge-check", {"type": "check", "n": 2})
                break
            except Exception:
                await asyncio.sleep(0.2)
        assert (await layer.receive("bridge-check"))["n"] == 2
        assert await asyncio.to_thread(blocking.set, "gateway-check", 1)  # on the new master
    finally:
        blocking.close()
        await layer.close_pools()
        await client.aclose(close_connection_pool=True)
        secure.stop()
        # channels-redis closes its pools, but not the connections of the Sentinel object it
        # makes for them: they go with the layer.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            del layer
            gc.collect()
