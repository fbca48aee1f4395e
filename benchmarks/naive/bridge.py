"""The baseline's bridge, as small as it gets: one MQTT client, one channel layer.

Down: every publication under ``rooms/<room>/...`` is sent to the room's group as the
tutorial's ``chat.message`` (JSON payloads as JSON). Up: what the consumer hands to
``mqtt-uplink`` is published to ``rooms/<room>/gateway``, which the down path skips.

Run: ``python -m benchmarks.naive.bridge`` with ``MQTT_URL`` and ``REDIS_URL`` set. It stops on
SIGTERM, or after ``BRIDGE_MAX_SECONDS`` (two hours unless told) in any case.
"""

import asyncio
import json
import os
import sys
from urllib.parse import urlsplit

import aiomqtt
import django
from redis.exceptions import TimeoutError as RedisTimeoutError

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchmarks.naive.settings")
django.setup()

from channels.layers import get_channel_layer  # noqa: E402

from benchmarks.naive.consumers import UPLINK_CHANNEL  # noqa: E402

UPLINK_TOPIC = "rooms/{room}/gateway"


async def down(client: aiomqtt.Client) -> None:
    layer = get_channel_layer()
    async for publication in client.messages:
        levels = str(publication.topic).split("/")
        if len(levels) < 2 or (len(levels) == 3 and levels[2] == "gateway"):
            continue
        try:
            message = json.loads(bytes(publication.payload))
        except ValueError:
            continue
        await layer.group_send(f"chat_{levels[1]}", {"type": "chat.message", "message": message})


async def up(client: aiomqtt.Client) -> None:
    layer = get_channel_layer()
    while True:
        try:
            event = await layer.receive(UPLINK_CHANNEL)
        except RedisTimeoutError:
            # With the default settings a receive that waits 5 s for nothing times out.
            continue
        topic = UPLINK_TOPIC.format(room=event["room"])
        await client.publish(topic, json.dumps(event["message"]), qos=0)


async def main() -> None:
    broker = urlsplit(os.environ["MQTT_URL"])
    max_seconds = float(os.environ.get("BRIDGE_MAX_SECONDS", "7200"))
    async with aiomqtt.Client(broker.hostname or "127.0.0.1", broker.port or 1883) as client:
        await client.subscribe("rooms/#")
        print("subscribed to rooms/#", flush=True)
        async with asyncio.timeout(max_seconds), asyncio.TaskGroup() as tasks:
            tasks.create_task(down(client))
            tasks.create_task(up(client))


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except TimeoutError:
        sys.exit(0)
