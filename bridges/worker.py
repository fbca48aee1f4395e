"""Running the bridge: connect first, then serve the ``mqtt-bridge`` channel, until told to stop."""

import asyncio
import logging
from typing import Any

from channels.layers import BaseChannelLayer
from channels.worker import Worker
from django.conf import settings

from bridges.bridge import Bridge
from bridges.dynsec import keep_in_step
from bridges.heartbeat import start_heartbeat, stop_heartbeat
from bridges.runtime import set_bridge
from gateway import metrics
from gateway.bridge_state import LocalBridge, set_local_bridge
from gateway.events import BRIDGE_CHANNEL

logger = logging.getLogger(__name__)


class SupervisedWorker(Worker):  # type: ignore[misc]
    """A channels worker that survives any message: a bad one is counted, never fatal.

    The stock worker exits on a message without ``type``; a gateway must not. Each consumer
    instance it starts runs in a task of its own, which the worker keeps, so that
    `stop_instances` can end them.
    """

    def __init__(self, *, application: Any, **kwargs: Any) -> None:
        self._instances: set[asyncio.Task[Any]] = set()
        super().__init__(application=self._tracked(application), **kwargs)

    def _tracked(self, application: Any) -> Any:
        """``application`` (ASGI 3), remembering the task of each instance while it runs."""
        instances = self._instances

        async def instance(scope: Any, receive: Any, send: Any) -> None:
            task = asyncio.current_task()
            assert task is not None
            instances.add(task)
            try:
                await application(scope, receive, send)
            finally:
                instances.discard(task)

        return instance

    async def handle(self) -> None:
        # gather, unlike the stock asyncio.wait, cancels the listeners when cancelled.
        await asyncio.gather(*(self.listener(channel) for channel in self.channels))

    async def stop_instances(self) -> None:
        """Stop every consumer instance the worker started, and wait until they have."""
        running = list(self._instances)
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)

    async def listener(self, channel: str) -> None:
        while True:
            try:
                message = await self.channel_layer.receive(channel)
                if not isinstance(message, dict) or not message.get("type"):
                    metrics.dropped("untyped_channel_message", f"on channel {channel}")
                    continue
                scope = {"type": "channel", "channel": channel}
                instance_queue = self.get_or_create_application_instance(channel, scope)
                await instance_queue.put(message)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("channel %s: receiving failed; going on", channel)
                await asyncio.sleep(1)


async def serve_bridge(
    bridge: Bridge,
    *,
    application: Any,
    channel_layer: BaseChannelLayer,
    channels: list[str] | None = None,
    stop: asyncio.Event,
) -> None:
    """Connect ``bridge`` to its broker, serve the bridge channel, and return after ``stop``."""
    set_bridge(bridge)
    link = bridge.link
    set_local_bridge(
        LocalBridge(
            client_id=link.settings.client_id,
            broker_url=link.settings.describe(),
            is_connected=link.connected.is_set,
        )
    )
    await bridge.start()
    worker = SupervisedWorker(
        application=application,
        channels=channels or [BRIDGE_CHANNEL],
        channel_layer=channel_layer,
    )
    serving = asyncio.create_task(worker.arun(), name="bridge-worker")
    heartbeat = start_heartbeat(bridge)
    access_sync = None
    if settings.MQTT_AUTH == "dynsec":
        access_sync = asyncio.create_task(
            keep_in_step(
                link.settings,
                settings.BRIDGE_RULES,
                anonymous_mqtt=settings.MQTT_ANONYMOUS == "public",
                interval=settings.MQTT_AUTH_SYNC_SECONDS,
            ),
            name="dynsec-sync",
        )
    try:
        await stop.wait()
    finally:
        if access_sync is not None:
            access_sync.cancel()
            await asyncio.gather(access_sync, return_exceptions=True)
        # First: a stopping bridge must not be counted as ready.
        await stop_heartbeat(heartbeat, bridge)
        serving.cancel()
        await asyncio.gather(serving, return_exceptions=True)
        await worker.stop_instances()
        await bridge.stop()
        set_bridge(None)
        set_local_bridge(None)
        logger.info("bridge stopped")
