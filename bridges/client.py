"""The bridge's connection to the broker: paho-mqtt on a thread of its own, asyncio on the outside.

paho-mqtt 2 is used for its manual acknowledgement: a QoS 1 message is acknowledged to the broker
only once the bridge has handed it on. Incoming messages cross into the event loop through a
bounded queue; when the queue is full the network thread waits, so the broker (not our memory)
holds the backlog. Reconnection is ours: capped exponential backoff with full jitter, and every
(re)connect subscribes again.
"""

import asyncio
import concurrent.futures
import logging
import random
import ssl
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from bridges.conf import MqttSettings
from gateway import metrics

logger = logging.getLogger(__name__)

MessageHandler = Callable[[paho.MQTTMessage], Awaitable[None]]

SESSION_EXPIRY_SECONDS = 3600
BACKOFF_BASE_SECONDS = 0.5
BACKOFF_CAP_SECONDS = 10.0


def backoff_delay(
    attempt: int, *, base: float = BACKOFF_BASE_SECONDS, cap: float = BACKOFF_CAP_SECONDS
) -> float:
    """Seconds to wait before reconnect ``attempt`` (0-based): full jitter, capped."""
    return random.uniform(0, min(cap, base * 2**attempt))  # noqa: S311 - jitter, not crypto


class MqttLink:
    """A supervised MQTT client that hands messages to ``handler`` in order, one at a time."""

    def __init__(
        self,
        settings: MqttSettings,
        *,
        subscriptions: list[tuple[str, int]],
        handler: MessageHandler,
        queue_size: int = 1000,
    ) -> None:
        self.settings = settings
        self._subscriptions = subscriptions
        self._handler = handler
        self._queue: asyncio.Queue[paho.MQTTMessage] = asyncio.Queue(maxsize=queue_size)
        self._stopping = threading.Event()
        self.connected = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._consumer: asyncio.Task[None] | None = None
        self._attempt = 0
        self._client = self._make_client()

    @property
    def is_v5(self) -> bool:
        return self.settings.protocol == "5"

    def _make_client(self) -> paho.Client:
        s = self.settings
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=s.client_id,
            protocol=paho.MQTTv5 if self.is_v5 else paho.MQTTv311,
            clean_session=None if self.is_v5 else False,
            reconnect_on_failure=False,
            manual_ack=True,
        )
        if s.username is not None:
            client.username_pw_set(s.username, s.password)
        if s.tls:
            client.tls_set(
                ca_certs=s.ca_certs,
                certfile=s.certfile,
                keyfile=s.keyfile,
                cert_reqs=ssl.CERT_REQUIRED,
            )
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        return client

    async def start(self) -> None:
        """Start connecting (in the background, retrying) and handing messages on."""
        self._loop = asyncio.get_running_loop()
        self._consumer = asyncio.create_task(self._consume(), name="mqtt-consume")
        self._thread = threading.Thread(target=self._run, name="mqtt-network", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        """Disconnect cleanly and stop the network thread."""
        self._stopping.set()
        self._client.disconnect()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 10)
        if self._consumer is not None:
            self._consumer.cancel()
            await asyncio.gather(self._consumer, return_exceptions=True)

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> paho.MQTTMessageInfo:
        """Queue a publication; paho sends it now or after the next reconnect."""
        return self._client.publish(topic, payload, qos=qos)

    # The network thread.

    def _run(self) -> None:
        s = self.settings
        properties = None
        if self.is_v5:
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = SESSION_EXPIRY_SECONDS
        while not self._stopping.is_set():
            try:
                self._client.connect(
                    s.host,
                    s.port,
                    keepalive=s.keepalive,
                    clean_start=False if self.is_v5 else paho.MQTT_CLEAN_START_FIRST_ONLY,
                    properties=properties,
                )
            except (OSError, ssl.SSLError) as exc:
                self._wait_before_retry(f"cannot reach broker {s.describe()}: {exc}")
                continue
            rc = MQTTErrorCode.MQTT_ERR_SUCCESS
            while rc == MQTTErrorCode.MQTT_ERR_SUCCESS and not self._stopping.is_set():
                rc = self._client.loop(timeout=0.5)
            if not self._stopping.is_set():
                self._wait_before_retry(f"connection to {s.describe()} lost: {rc.name}")
        self._client.loop(timeout=0.1)  # flush the DISCONNECT

    def _wait_before_retry(self, why: str) -> None:
        delay = backoff_delay(self._attempt)
        self._attempt += 1
        metrics.inc("mqtt_reconnect_attempts")
        logger.warning("%s; retrying in %.1f s", why, delay)
        self._stopping.wait(delay)

    def _on_connect(
        self, client: paho.Client, _userdata: Any, _flags: Any, reason: ReasonCode, _properties: Any
    ) -> None:
        if reason.is_failure:
            hint = ""
            if "protocol" in str(reason).lower() and self.is_v5:
                hint = " (the broker may only speak MQTT 3.1.1: set MQTT_PROTOCOL=3.1.1)"
            logger.error(
                "broker %s refused the connection: %s%s", self.settings.describe(), reason, hint
            )
            return
        self._attempt = 0
        metrics.inc("mqtt_connects")
        if self.is_v5:
            # No Local: the broker does not send our own publications back to us.
            topics: list[tuple[str, Any]] = [
                (topic, SubscribeOptions(qos=qos, noLocal=True))
                for topic, qos in self._subscriptions
            ]
        else:
            topics = list(self._subscriptions)
        client.subscribe(topics)
        logger.info("connected to %s", self.settings.describe())
        self._call_in_loop(self.connected.set)

    def _on_subscribe(
        self,
        _client: paho.Client,
        _userdata: Any,
        _mid: int,
        reasons: list[ReasonCode],
        _properties: Any,
    ) -> None:
        refused = [str(r) for r in reasons if r.is_failure]
        if refused:
            metrics.inc("mqtt_subscriptions_refused", amount=len(refused))
            logger.error(
                "broker %s refused subscriptions to %s: %s",
                self.settings.describe(),
                [t for t, _ in self._subscriptions],
                refused,
            )
            return
        logger.info("subscribed to %s", [t for t, _ in self._subscriptions])

    def _on_disconnect(
        self,
        _client: paho.Client,
        _userdata: Any,
        _flags: Any,
        reason: ReasonCode,
        _properties: Any,
    ) -> None:
        self._call_in_loop(self.connected.clear)
        if not self._stopping.is_set():
            logger.warning("disconnected from %s: %s", self.settings.describe(), reason)

    def _on_message(self, _client: paho.Client, _userdata: Any, message: paho.MQTTMessage) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return  # not acknowledged: the broker redelivers it to the next session
        future = asyncio.run_coroutine_threadsafe(self._queue.put(message), loop)
        while not self._stopping.is_set():
            try:
                future.result(timeout=0.5)
            except concurrent.futures.TimeoutError:
                continue  # the queue is full: hold the broker back rather than drop
            return
        future.cancel()

    def _call_in_loop(self, callback: Callable[[], object]) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(callback)

    # The event loop.

    async def _consume(self) -> None:
        while True:
            message = await self._queue.get()
            try:
                await self._handler(message)
            except asyncio.CancelledError:
                raise
            except Exception:
                metrics.dropped("handler_error", f"topic {message.topic}")
                logger.exception("handling a message from %s failed", message.topic)
            # Acknowledged only now that it was handed on (or counted as dropped).
            self._client.ack(message.mid, message.qos)
