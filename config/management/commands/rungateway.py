"""``manage.py rungateway``: the whole gateway in one process, for one machine.

daphne serves HTTP and WebSocket, the MQTT bridge runs beside it, and where ``MQTT_URL`` is
unset the gateway's embedded broker (`bridges.embedded_broker`: MQTT 3.1.1 and 5, enforcing
the gateway's MQTT permissions) listens on ``--mqtt-port``; where ``REDIS_URL`` is unset the
in-memory channel layer joins them.
"""

import asyncio
import errno
import logging
import os
import shlex
import signal
import socket
import sys
from typing import Any

from channels.layers import get_channel_layer
from channels.routing import get_default_application
from daphne.endpoints import build_endpoint_description_strings
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
from protocols.compat import GatewayServer

logger = logging.getLogger(__name__)

# Twisted's reactor is typed as a bundle of interfaces; as used here it is plainly dynamic.
reactor: Any = twisted_reactor
# Connections the kernel may hold for daphne before it accepts them. Twisted's default, 50, is
# overrun when thousands of browsers come back at once after a restart: their connections are
# dropped and retried seconds later. (The kernel caps it at net.core.somaxconn.)
LISTEN_BACKLOG = 4096


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


def _reachable(host: str) -> str:
    """``host`` as a client on this machine writes it: a wildcard address becomes loopback."""
    if host in ("", "0.0.0.0"):  # noqa: S104 (not binding: naming what to connect to)
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host


def _python() -> str:
    """The interpreter running this process, as the greeting's commands name it."""
    if not sys.executable:
        return "python"
    relative = os.path.relpath(sys.executable)
    return shlex.quote(sys.executable if relative.startswith("..") else relative)


def greeting(
    host: str,
    port: int,
    mqtt_host: str,
    mqtt_port: int,
    *,
    embedded: bool = True,
    python: str = ".venv/bin/python",
) -> str:
    """What ``rungateway`` prints once it listens: where to go and what to try first.

    ``python`` is the interpreter the commands are shown with (the one running the gateway).
    """
    web_host = _reachable(host)
    page = f"http://{f'[{web_host}]' if ':' in web_host else web_host}:{port}/"
    broker_host = _reachable(mqtt_host)
    mqtt = f"-h {broker_host} -p {mqtt_port}"
    device = "-t rooms/kitchen/sensor-1 -m '{\"t\": 21.5}'"
    if embedded:
        broker = [
            f"  MQTT:    {broker_host} port {mqtt_port} (embedded; anonymous clients may use "
            "public rooms)"
        ]
        sign_in = ""
    else:
        broker = [
            f"  MQTT:    {broker_host} port {mqtt_port} (MQTT_URL); register a device first, its "
            "secret is the last line:",
            f"           {python} manage.py add_device sensor-1 --grant kitchen:write",
        ]
        sign_in = " -u sensor-1 -P SECRET"
    return "\n".join(
        [
            "",
            "The gateway is up.",
            f"  Page:    {page}  (room kitchen: {page}rooms/kitchen/)",
            "  Sign in: create the first user, then log in on the page:",
            f"           {python} manage.py createsuperuser",
            *broker,
            "Publish as a device to room kitchen:",
            f"  {python} -m bridges.mqtt_cli pub {mqtt}{sign_in} {device}",
            "Watch the room's topics (Ctrl-C to stop):",
            f"  {python} -m bridges.mqtt_cli sub {mqtt}{sign_in} -t 'rooms/kitchen/#' -v",
            "Or with Debian's mosquitto-clients: mosquitto_pub and mosquitto_sub take the same "
            "options.",
            "",
        ]
    )


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
        self.stdout.write(
            f"Gateway on http://{host}:{port}/ ; MQTT {mqtt.describe()}"
            + (" (embedded)" if embedded else "")
            + f" ; channel layer {settings.CHANNEL_LAYERS['default']['BACKEND']}"
        )
        runner = _Sidecars(mqtt, embedded=embedded, application=application)
        hello = greeting(host, port, mqtt.host, mqtt.port, embedded=embedded, python=_python())

        def ready() -> None:  # daphne listens: start the rest, and say where everything is
            runner.schedule()
            self.stdout.write(hello)
            self.stdout.flush()

        # Frames over GATEWAY_MAX_FRAME_BYTES close with 1009: see protocols.compat.
        server = GatewayServer(
            application=application,
            endpoints=[
                f"{endpoint}:backlog={LISTEN_BACKLOG}"
                for endpoint in build_endpoint_description_strings(host=host, port=port)
            ],
            signal_handlers=False,
            ready_callable=ready,
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
                await broker.close()
