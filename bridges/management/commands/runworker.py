"""``runworker``, extended: ``runworker mqtt-bridge`` connects to the broker at start-up.

Channels' own worker would start the bridge consumer only when the first channel message
arrived, so devices would be unheard until a browser spoke. Other channels run as before.
"""

import asyncio
import signal
from typing import Any

from channels.layers import InMemoryChannelLayer, get_channel_layer
from channels.management.commands.runworker import Command as ChannelsRunworker
from channels.routing import get_default_application
from django.conf import settings
from django.core.management import CommandError

from bridges.bridge import Bridge
from bridges.worker import serve_bridge
from gateway.events import BRIDGE_CHANNEL


class Command(ChannelsRunworker):  # type: ignore[misc]
    help = (
        "Runs a channel worker. 'runworker mqtt-bridge' runs the MQTT bridge: it connects to "
        "MQTT_URL at start-up and bridges the broker and the rooms in both directions."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        if BRIDGE_CHANNEL not in options["channels"]:
            super().handle(*args, **options)
            return
        mqtt = getattr(settings, "MQTT", None)
        if mqtt is None:
            raise CommandError(
                "MQTT_URL is not set: runworker mqtt-bridge needs a broker, e.g. "
                "MQTT_URL=mqtt://user:pass@localhost:1883 (or use rungateway for one process "
                "with an embedded broker)"
            )
        layer = get_channel_layer(options.get("layer") or "default")
        if layer is None or isinstance(layer, InMemoryChannelLayer):
            raise CommandError(
                "REDIS_URL is not set: runworker mqtt-bridge shares rooms with daphne through "
                "a channel layer, e.g. REDIS_URL=redis://localhost:6379/0 (or use rungateway)"
            )
        bridge = Bridge.from_settings(mqtt)
        asyncio.run(self._serve(bridge, layer, list(options["channels"])))

    async def _serve(self, bridge: Bridge, layer: Any, channels: list[str]) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        self.stdout.write(f"Bridging {bridge.link.settings.describe()} <-> channels {channels}")
        await serve_bridge(
            bridge,
            application=get_default_application(),
            channel_layer=layer,
            channels=channels,
            stop=stop,
        )
