"""The MQTT brokers the broker contract suite runs against, each with what it can do.

- ``mosquitto``: the real thing (Debian's Mosquitto 2.0), the reference for the contract.
- ``amqtt``: amqtt in this process, as ``make run`` embedded it, but plain: anonymous clients
  and no gateway permission plugins. MQTT 3.1.1 only.
- ``embedded``: the gateway's own broker (``python -m bridges.broker``), as a child process.

A broker states what it offers in `BrokerUnderTest`; a test that needs more than that is skipped
with the reason `BrokerUnderTest.lacks` gives. Bugs are not capabilities: the suite keeps those
as expected failures.
"""

import asyncio
import contextlib
import gc
import os
import signal
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from amqtt.broker import Broker

from tests.support.processes import REPO, Mosquitto, Process, free_port, port_open, wait_for

Capability = Literal["mqtt5", "shared_subscriptions", "persistent_sessions"]
BROKERS = ("mosquitto", "amqtt", "embedded")
EMBEDDED_MAIN = REPO / "bridges" / "broker" / "__main__.py"


@dataclass(frozen=True)
class BrokerUnderTest:
    """A running broker on ``host:port``, anonymous clients allowed, and what it offers."""

    name: str
    port: int
    mqtt5: bool
    """It speaks MQTT 5 (properties, No Local, session expiry), not only MQTT 3.1.1."""
    shared_subscriptions: bool
    """``$share/<group>/<filter>`` hands each message to one member of the group."""
    persistent_sessions: bool
    """A client that connects without a clean session finds its subscriptions and queue."""
    host: str = "127.0.0.1"
    limits: str = ""
    """What it lacks, in a few words, for the reasons tests are skipped with."""

    def lacks(self, capability: Capability) -> str | None:
        """Why a test that needs ``capability`` cannot run here; None if it can."""
        if getattr(self, capability):
            return None
        what = {
            "mqtt5": "MQTT 5",
            "shared_subscriptions": "shared subscriptions ($share/<group>/...)",
            "persistent_sessions": "persistent sessions",
        }[capability]
        return f"{self.name} has no {what}" + (f" ({self.limits})" if self.limits else "")


@contextlib.contextmanager
def run_mosquitto(workdir: Path) -> Iterator[BrokerUnderTest]:
    """Mosquitto on a free port, anonymous clients allowed, nothing kept on disk."""
    broker = Mosquitto(workdir).start()
    try:
        yield BrokerUnderTest(
            "mosquitto",
            broker.port,
            mqtt5=True,
            shared_subscriptions=True,
            persistent_sessions=True,
        )
    finally:
        broker.stop()


class AmqttThread:
    """An amqtt broker on its own event loop, on a thread of this process.

    Its own loop, so that synchronous tests (paho) and asynchronous ones (aiomqtt) can both
    use it, and a test that blocks its own loop does not stall the broker.
    """

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="amqtt-broker", daemon=True
        )
        self._broker: Broker | None = None

    def _run(self, coroutine: Any, timeout: float = 15.0) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        return future.result(timeout=timeout)

    async def _start(self) -> Broker:
        broker = Broker(
            {
                "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{self.port}"}},
                # What rungateway configures, less the gateway's permission plugins: anyone may
                # connect, subscribe and publish.
                "plugins": {
                    "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}
                },
            }
        )
        await broker.start()
        return broker

    async def _stop(self) -> None:
        if self._broker is not None:
            await self._broker.shutdown()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        # amqtt leaves some of its clients' stream writers unclosed: collected now, while their
        # loop runs, they close quietly; collected after it closed, they warn in whichever test
        # the collector happens to run.
        gc.collect()

    def start(self) -> "AmqttThread":
        self._thread.start()
        self._broker = self._run(self._start())  # listening once started
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            with contextlib.suppress(Exception):
                self._run(self._stop())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self._loop.close()


@contextlib.contextmanager
def run_amqtt() -> Iterator[BrokerUnderTest]:
    """amqtt in this process on a free port: anonymous, no permission plugins."""
    broker = AmqttThread().start()
    try:
        yield BrokerUnderTest(
            "amqtt",
            broker.port,
            mqtt5=False,
            shared_subscriptions=False,
            persistent_sessions=True,
            limits="amqtt 0.12 speaks MQTT 3.1.1 only",
        )
    finally:
        broker.stop()


def embedded_built() -> bool:
    """Whether the gateway's own broker can be run yet (``python -m bridges.broker``)."""
    return EMBEDDED_MAIN.exists()


@contextlib.contextmanager
def run_embedded(workdir: Path) -> Iterator[BrokerUnderTest]:
    """The gateway's own broker as a child process on a free port (no Django settings needed).

    On leaving, it must stop on SIGTERM, before it would be killed.
    """
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MQTT_", "DJANGO_"))}
    env["PYTHONUNBUFFERED"] = "1"
    process = Process(
        "embedded-broker",
        [sys.executable, "-m", "bridges.broker", "--host", "127.0.0.1", "--port", str(port)],
        workdir / "embedded-broker.log",
        env=env,
    ).start()

    def listening() -> bool:
        if not process.alive():
            raise RuntimeError(f"the embedded broker exited early:\n{process.log()[-3000:]}")
        return f"listening on 127.0.0.1:{port}" in process.log() and port_open(port)

    try:
        wait_for(listening, f"the embedded broker to listen on port {port}")
        yield BrokerUnderTest(
            "embedded", port, mqtt5=True, shared_subscriptions=True, persistent_sessions=True
        )
    finally:
        status = process.stop()
    assert status != -signal.SIGKILL, f"the embedded broker ignored SIGTERM:\n{process.log()}"
