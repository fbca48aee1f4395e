"""``manage.py rungateway``: the whole gateway in one process, for one machine.

daphne serves HTTP and WebSocket, the MQTT bridge runs beside it, and where ``MQTT_URL`` is
unset an embedded broker (`bridges.embedded_broker`: amqtt, MQTT 3.1.1, enforcing the gateway's
MQTT permissions) listens on ``--mqtt-port``; where ``REDIS_URL`` is unset the in-memory channel
layer joins them.
"""

import asyncio
import errno
import logging
import signal
import socket
from typing import Any

from channels.layers import get_channel_layer
from channels.routing import get_default_application
from daphne.endpoints import build_endpoint_description_strings
from daphne.server import Server
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser
from twisted.internet import reactor as twisted_reactor
from twisted.internet.defer import Deferred

from bridges.bridge import Bridge
from bridges.conf import MqttSettings
from bridges.embedded_broker import bridge_settings, start_embedded_broker
from bridges.worker import serve_bridge
from gateway.conf import gateway_settings

logger = logging.getLogger(__name__)

# Twisted's reactor is typed as a bundle of interfaces; as used here it is plainly dynamic.
reactor: Any = twisted_reactor


def check_port_free(host: str, port: int, what: str, option: str) -> None:
    """Fail with a clear message when ``host:port`` is already taken."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise CommandError(
                    f"port {port} on {host} ({what}) is already in use: stop the program using "
                    f"it, or choose another port with {option}"
                ) from exc
            raise CommandError(f"cannot listen on {host}:{port} ({what}): {exc}") from exc


class Command(BaseCommand):
    help = "Runs the gateway in one process: web server, MQTT bridge and, if needed, a broker."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1", help="HTTP/WebSocket address")
        parser.add_argument("--port", type=int, default=8000, help="HTTP/WebSocket port")
        parser.add_argument(
            "--mqtt-host", default="127.0.0.1", help="embedded broker address (no MQTT_URL)"
        )
        parser.add_argument(
            "--mqtt-port", type=int, default=1883, help="embedded broker port (no MQTT_URL)"
        )
        parser.add_argument(
            "--no-migrate", action="store_true", help="do not apply database migrations first"
        )

    def handle(self, *args: Any, **options: Any) -> None:

        host, port = options["host"], options["port"]
        for value, name in ((port, "--port"), (options["mqtt_port"], "--mqtt-port")):
            if not 1 <= value <= 65535:
                raise CommandError(f"{name} {value} is not a TCP port (1-65535)")
        check_port_free(host, port, "HTTP/WebSocket", "--port (make run PORT=...)")
        mqtt: MqttSettings | None = settings.MQTT
        embedded = mqtt is None
        if mqtt is None:
            if settings.MQTT_AUTH == "dynsec":
                raise CommandError(
                    "MQTT_AUTH=dynsec needs MQTT_URL (a Mosquitto broker): the embedded broker "
                    "enforces the gateway's MQTT permissions itself; unset MQTT_AUTH"
                )
            mqtt_host, mqtt_port = options["mqtt_host"], options["mqtt_port"]
            check_port_free(mqtt_host, mqtt_port, "MQTT", "--mqtt-port (make run MQTT_PORT=...)")
            # The bridge signs in to the embedded broker as itself, with a password made now.
            mqtt = bridge_settings(mqtt_host, mqtt_port, gateway_id=gateway_settings().gateway_id)
        if not options["no_migrate"]:
            call_command("migrate", interactive=False, verbosity=0)
        application = get_default_application()
        limit = gateway_settings().max_frame_bytes
        self.stdout.write(
            f"Gateway on http://{host}:{port}/ ; MQTT {mqtt.describe()}"
            + (" (embedded)" if embedded else "")
            + f" ; channel layer {settings.CHANNEL_LAYERS['default']['BACKEND']}"
        )
        runner = _Sidecars(mqtt, embedded=embedded, application=application)
        server = Server(
            application=application,
            endpoints=build_endpoint_description_strings(host=host, port=port),
            signal_handlers=False,
            websocket_max_message_size=limit,
            websocket_max_frame_size=limit,
            ready_callable=runner.schedule,
        )
        runner.server = server
        server.run()
        if runner.failure is not None:
            raise CommandError(runner.failure)


class _Sidecars:
    """The embedded broker and the bridge, on daphne's event loop."""

    def __init__(self, mqtt: MqttSettings, *, embedded: bool, application: Any) -> None:
        self.mqtt = mqtt
        self.embedded = embedded
        self.application = application
        self.server: Any = None
        self.failure: str | None = None
        self.stop = asyncio.Event()

    def schedule(self) -> None:

        # callLater, not callWhenRunning: the latter fires before the asyncio loop runs.
        reactor.callLater(0, self._begin)
        reactor.addSystemEventTrigger("before", "shutdown", self._before_shutdown)

    def _begin(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self._request_stop)
        self.task = loop.create_task(self._run())

    def _request_stop(self) -> None:

        self.stop.set()
        reactor.callLater(0, reactor.stop)

    def _before_shutdown(self) -> Any:

        self.stop.set()
        return Deferred.fromFuture(asyncio.ensure_future(self._finished()))

    async def _finished(self) -> None:
        await asyncio.wait_for(asyncio.shield(self.task), timeout=15)

    async def _run(self) -> None:

        broker = None
        try:
            if self.embedded:
                broker = await start_embedded_broker(self.mqtt)
            bridge = Bridge.from_settings(self.mqtt)
            await serve_bridge(
                bridge,
                application=self.application,
                channel_layer=get_channel_layer(),
                stop=self.stop,
            )
        except Exception as exc:
            logger.exception("the bridge failed")
            self.failure = f"the bridge failed: {exc}"
            self._request_stop()
        finally:
            if broker is not None:
                await broker.shutdown()
