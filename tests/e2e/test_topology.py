"""The topology for more than one machine, as real processes: two daphne processes, two bridge
workers, a Redis master with one replica and three Sentinels, PostgreSQL and Mosquitto
(docker-compose.yml's ha profile, here on loopback). Rooms work across all of it, both ways,
and go on working after the Redis master is lost.
"""

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import pytest
from websockets.asyncio.client import ClientConnection

from tests.conftest import gateway_on_sentinels
from tests.support.clients import mqtt_client, recv_json, ws_connect
from tests.support.devices import Device
from tests.support.processes import (
    Gateway,
    Mosquitto,
    Postgres,
    RedisReplicated,
    http_get,
    migrated,
    wait_for,
)


@pytest.fixture
def topology(
    tmp_path: Path, broker: Mosquitto, postgres_server: Postgres
) -> Iterator[tuple[Gateway, RedisReplicated]]:
    database_url = migrated(postgres_server.create_database("gateway_topology"))
    replicated, gateway = gateway_on_sentinels(tmp_path, broker, database_url, "gw-topology")
    try:
        gateway.start(workers=2)
        gateway.start_web()
        yield gateway, replicated
    finally:
        gateway.stop()
        replicated.stop()


async def next_message(ws: ClientConnection) -> dict[str, object]:
    while True:
        frame = await recv_json(ws, 15)
        if frame.get("type") == "message":
            return frame


async def device_heard(device: aiomqtt.Client) -> dict[str, object]:
    async with asyncio.timeout(15):
        async for message in device.messages:
            assert isinstance(message.payload, bytes)
            envelope = json.loads(message.payload)
            assert isinstance(envelope, dict)
            return envelope
    raise AssertionError("the device heard nothing")


async def test_rooms_work_across_two_web_processes_two_workers_and_a_redis_failover(
    topology: tuple[Gateway, RedisReplicated], broker: Mosquitto
) -> None:
    gateway, replicated = topology
    bases = [f"ws://127.0.0.1:{port}" for port in gateway.ports]
    for port in gateway.ports:
        assert http_get(f"http://127.0.0.1:{port}/readyz")[0] == 200
    async with (
        ws_connect(bases[0], "plant") as first,
        ws_connect(bases[1], "plant") as second,
        mqtt_client(broker.port) as listener,
    ):
        await listener.subscribe("rooms/plant/gateway", qos=1)
        with Device(broker.port, "plant-meter") as meter:
            for round_ in ("before", "after"):
                # A device's message reaches the browsers of both web processes, once each.
                meter.publish("rooms/plant/meter", json.dumps({"round": round_}).encode())
                heard = [await next_message(ws) for ws in (first, second)]
                assert [h["message"] for h in heard] == [{"round": round_}] * 2
                assert heard[0]["seq"] == heard[1]["seq"]
                # A browser's message on one reaches the other, and the room's devices.
                await second.send(json.dumps({"message": f"hello {round_}"}))
                assert (await next_message(first))["message"] == f"hello {round_}"
                assert (await next_message(second))["message"] == f"hello {round_}"
                assert (await device_heard(listener))["message"] == f"hello {round_}"
                if round_ == "before":
                    old = await asyncio.to_thread(replicated.kill_master)
                    await asyncio.to_thread(
                        wait_for,
                        lambda old=old: replicated.master_port() not in (None, old),
                        "a Sentinel to promote the replica",
                        30,
                    )
                    # Every process finds the new master: the pages say ready again.
                    for port in gateway.ports:
                        await asyncio.to_thread(
                            wait_for,
                            lambda port=port: http_get(f"http://127.0.0.1:{port}/readyz")[0] == 200,
                            f"daphne on {port} ready on the new master",
                            30,
                        )
