"""The bridge's channel worker: consumer instances it starts are stopped, and waited for."""

import asyncio
from typing import Any

from channels.layers import InMemoryChannelLayer

from bridges.worker import SupervisedWorker


async def test_stop_instances_ends_the_consumers_the_worker_started() -> None:
    received: list[dict[str, Any]] = []
    ended: list[str] = []

    async def consumer(scope: dict[str, Any], receive: Any, send: Any) -> None:
        try:
            while True:
                received.append(await receive())
        finally:
            ended.append(scope["channel"])

    layer = InMemoryChannelLayer()
    worker = SupervisedWorker(application=consumer, channels=["bridge-test"], channel_layer=layer)
    serving = asyncio.create_task(worker.arun())
    await layer.send("bridge-test", {"type": "mqtt.publish"})
    await layer.send("bridge-test", {"no": "type"})  # counted and skipped, not fatal
    await layer.send("bridge-test", {"type": "mqtt.publish", "n": 2})
    for _ in range(100):
        if len(received) == 2:
            break
        await asyncio.sleep(0.01)
    serving.cancel()
    await asyncio.gather(serving, return_exceptions=True)
    assert ended == []  # the listeners stopped; the consumer instance is still there

    await worker.stop_instances()

    assert received == [{"type": "mqtt.publish"}, {"type": "mqtt.publish", "n": 2}]
    assert ended == ["bridge-test"]
