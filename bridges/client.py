"""The bridge's connection to the broker: paho-mqtt driven by the asyncio event loop.

paho-mqtt 2 is used for its manual acknowledgement (``manual_ack``): a QoS 1 message is
acknowledged to the broker only once the bridge has handed it on, so a bridge that dies in between
gets it again. paho tells the link through its socket callbacks when its socket opens and closes
and when it has something to write; the link watches the socket with the event loop and calls
``loop_read`` and ``loop_write`` when it is ready, on the loop's own thread: no second thread
competes with the loop for the interpreter. One wake-up reads what the socket holds (up to
`BATCH_MESSAGES` packets); the messages ``on_message`` delivered meanwhile wait in an inbox for the
loop's consumer, which hands them on together. While the inbox is full the link stops reading the
socket, so the broker (not our memory) holds the backlog. Only the connect itself (name lookup,
TCP, TLS) runs on a worker thread. Reconnection is ours: capped exponential backoff with full
jitter, and every (re)connect subscribes again.

With MQTT 5 the link subscribes through a shared subscription (``$share/<group>/<filter>``), so
several bridge processes split the load, and once, at each connect, through a plain subscription
that is dropped again as soon as the broker confirms it: that one is how the retained state is
learnt. The shared one asks for no retained messages at subscribe time (brokers differ there) and
for the retain flag as published, so a retained message on it is a live update of the state.
Subscription identifiers tell the two apart. With MQTT 3.1.1 a plain subscription serves both.

Each connection keeps its status retained on ``gateways/<client id>/status``: ``online`` once
connected, ``offline`` with ``"reason": "stopped"`` when it stops cleanly, and, as its last will,
``"reason": "lost"`` when it vanishes. A clean stop disconnects properly, so the broker drops the
will: devices never see a stopping bridge reported lost.
"""

import asyncio
import contextlib
import json
import logging
import random
import ssl
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from bridges.conf import MqttSettings
from gateway import metrics
from gateway.errors import GatewayError

logger = logging.getLogger(__name__)

SESSION_EXPIRY_SECONDS = 3600
STATUS_TIMEOUT_SECONDS = 2.0  # for the broker to confirm a stopping bridge's status
BACKOFF_BASE_SECONDS = 0.5
BACKOFF_CAP_SECONDS = 10.0
# Publications paho keeps while the broker is away; past that a publish is refused at once.
MAX_QUEUED_PUBLICATIONS = 10_000
BATCH_MESSAGES = 256  # messages handed on together at most; packets read in one wake-up
ORIGIN_PROPERTY = "gateway"
# Where each bridge connection says whether it is up: retained, with a last will saying "lost".
STATUS_TOPIC = "gateways/{client_id}/status"
MISC_INTERVAL_SECONDS = 1.0  # how often paho's keepalive and retry timers are looked at
_LIVE, _SNAPSHOT = 1, 2  # subscription identifiers


class PublishRefusedError(GatewayError):
    """The broker refused a publication, or too many are waiting for it."""

    code = "broker_refused"


class RedeliverError(Exception):
    """Raised by a handler: leave the message unacknowledged, for the broker to redeliver."""


def backoff_delay(
    attempt: int, *, base: float = BACKOFF_BASE_SECONDS, cap: float = BACKOFF_CAP_SECONDS
) -> float:
    """Seconds to wait before retry ``attempt`` (0-based): full jitter, capped."""
    return random.uniform(0, min(cap, base * 2**attempt))  # noqa: S311 - jitter, not crypto


@dataclass(slots=True)  # not frozen: a frozen one takes 3x as long to make
class Incoming:
    """A message from the broker, as the bridge needs it.

    Attributes:
        mid: the packet id; a redelivery (after a crash) carries the same one.
        dup: the broker may have delivered it before (MQTT's DUP flag, set on redelivery).
        snapshot: a retained message learnt at (re)connect, not a live one.
        retain: the message is (was published as) retained.
        origin: the gateway id in the message's origin property, if any.
        content_type: the MQTT 5 content type, if any.
    """

    topic: str
    payload: bytes
    qos: int
    mid: int
    retain: bool
    snapshot: bool
    origin: str | None
    content_type: str | None
    dup: bool = False


# Takes the messages that arrived together, in order; they are acknowledged when it returns.
Handler = Callable[[list[Incoming]], Awaitable[None]]


class MqttLink:
    """A supervised MQTT client that hands messages to ``handler`` in order, one batch at a time."""

    def __init__(
        self,
        settings: MqttSettings,
        *,
        filters: list[tuple[str, int]],
        handler: Handler,
        origin: str,
        shared_group: str | None = None,
        queue_size: int = 1000,
    ) -> None:
        self.settings = settings
        self._filters = filters
        self._handler = handler
        self._origin = origin
        self._shared_group = shared_group if self.is_v5 else None
        # Messages received and not yet handed on, in order. Past `_queue_size` of them the socket
        # is not read until the consumer catches up.
        self._inbox: list[Incoming] = []
        self._queue_size = queue_size
        self._arrived = asyncio.Event()  # the inbox has messages for the consumer
        self._idle = asyncio.Event()  # nothing waits in the inbox or is being handed on
        self._idle.set()
        self._stopping = asyncio.Event()  # no more connects
        self._draining = False  # take no new messages
        self.connected = asyncio.Event()
        # Set whenever the connection comes or goes (the heartbeat clears it as it beats).
        self.connection_changed = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._network: asyncio.Task[None] | None = None
        self._consumer: asyncio.Task[None] | None = None
        self._sock: paho.SocketLike | None = None  # the connection's socket, while it is watched
        self._fd = -1  # its descriptor, as it was when the watch began
        self._reading = False
        self._writing = False
        self._lost: asyncio.Future[None] | None = None  # done when the watched socket closes
        self._packets = 0  # PUBLISH and PUBACK packets paho has handed over: the reads' progress
        self._attempt = 0
        self._acks_lock = threading.Lock()
        self._pending: dict[int, asyncio.Future[None]] = {}
        self._early: dict[int, ReasonCode | None] = {}
        self._snapshot_mid: int | None = None
        self._client = self._make_client()

    @property
    def is_v5(self) -> bool:
        return self.settings.protocol == "5"

    @property
    def status_topic(self) -> str:
        """The retained topic of this connection's status (`STATUS_TOPIC`)."""
        return STATUS_TOPIC.format(client_id=self.settings.client_id)

    def _status(self, *, online: bool, reason: str | None = None) -> bytes:
        status: dict[str, Any] = {"online": online, "client_id": self.settings.client_id}
        if reason is not None:
            status["reason"] = reason
        status["gateway"] = self._origin
        return json.dumps(status).encode()

    def _announce(self, *, online: bool, reason: str | None = None) -> "asyncio.Future[None]":
        """Publish this connection's status; a failure is logged, never raised."""
        payload = self._status(online=online, reason=reason)
        future = self.publish(self.status_topic, payload, qos=1, retain=True)

        def logged(done: "asyncio.Future[None]") -> None:
            if not done.cancelled() and done.exception() is not None:
                logger.warning("status %s not published: %s", self.status_topic, done.exception())

        future.add_done_callback(logged)
        return future

    def _make_client(self) -> paho.Client:
        s = self.settings
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=s.client_id,
            protocol=paho.MQTTv5 if self.is_v5 else paho.MQTTv311,
            clean_session=None if self.is_v5 else False,
            reconnect_on_failure=False,
        )
        # A QoS 1 or 2 message is acknowledged by `_consume`, once it has been handed on.
        client.manual_ack_set(True)
        client.max_queued_messages_set(MAX_QUEUED_PUBLICATIONS)
        if s.username is not None:
            client.username_pw_set(s.username, s.password)
        if s.tls:
            client.tls_set(
                ca_certs=s.ca_certs,
                certfile=s.certfile,
                keyfile=s.keyfile,
                cert_reqs=ssl.CERT_REQUIRED,
            )
        client.will_set(self.status_topic, self._status(online=False, reason="lost"), 1, True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        client.on_publish = self._on_publish
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_write_wanted
        client.on_socket_unregister_write = self._on_write_wanted
        return client

    async def start(self) -> None:
        """Start connecting (in the background, retrying) and handing messages on."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._consumer = asyncio.create_task(self._consume(), name="mqtt-consume")
        self._network = asyncio.create_task(self._run(), name="mqtt-network")

    async def stop(self, drain_seconds: float = 10.0) -> None:
        """Drain: hand on what was received, wait for publications, then disconnect."""
        self._draining = True
        try:
            await asyncio.wait_for(self._idle.wait(), drain_seconds)
            pending = list(self._pending.values())
            if pending and self.connected.is_set():
                await asyncio.wait(pending, timeout=drain_seconds)
        except TimeoutError:
            logger.warning(
                "drain incomplete after %.0f s; the broker redelivers the rest", drain_seconds
            )
        if self.connected.is_set():
            # Said by the bridge itself: the clean DISCONNECT below tells the broker to drop
            # the last will, which is for connections that vanish.
            stopped = self._announce(online=False, reason="stopped")
            await asyncio.wait([stopped], timeout=STATUS_TIMEOUT_SECONDS)
        self._stopping.set()
        self._client.disconnect()  # written when the socket is writable; paho then closes it
        if self._network is not None:
            done, _ = await asyncio.wait([self._network], timeout=10)
            if not done:
                self._network.cancel()
                await asyncio.gather(self._network, return_exceptions=True)
        if self._consumer is not None:
            self._consumer.cancel()
            await asyncio.gather(self._consumer, return_exceptions=True)

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int,
        retain: bool = False,
        content_type: str | None = None,
    ) -> "asyncio.Future[None]":
        """Publish; the future is done when the broker has the message (QoS 0: when sent).

        paho keeps a publication while the broker is away and sends it after the reconnect.
        """
        properties = None
        if self.is_v5:
            properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            properties.UserProperty = [(ORIGIN_PROPERTY, self._origin)]
            if content_type:
                properties.ContentType = content_type
        info = self._client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            future.set_exception(PublishRefusedError(paho.error_string(info.rc)))
            return future
        with self._acks_lock:
            if info.mid in self._early:
                self._settle(future, self._early.pop(info.mid))
            else:
                self._pending[info.mid] = future
        return future

    @staticmethod
    def _settle(future: "asyncio.Future[None]", reason: ReasonCode | None) -> None:
        if future.done():
            return
        if reason is not None and reason.is_failure:
            future.set_exception(PublishRefusedError(str(reason)))
        else:
            future.set_result(None)

    # The connection, driven by the event loop.

    async def _run(self) -> None:
        s = self.settings
        properties = None
        if self.is_v5:
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = SESSION_EXPIRY_SECONDS
        while not self._stopping.is_set():
            try:
                # paho opens the socket here, on the worker thread: `_on_socket_open` has the
                # loop watch it before this returns to the loop.
                await asyncio.to_thread(
                    self._client.connect,
                    s.host,
                    s.port,
                    keepalive=s.keepalive,
                    clean_start=False if self.is_v5 else paho.MQTT_CLEAN_START_FIRST_ONLY,
                    properties=properties,
                )
            except (OSError, ssl.SSLError) as exc:
                await self._wait_before_retry(f"cannot reach broker {s.describe()}: {exc}")
                continue
            lost = self._lost
            if self._stopping.is_set():
                self._client.disconnect()  # stopped while connecting
            misc = asyncio.create_task(self._keep_alive(), name="mqtt-keepalive")
            try:
                if lost is not None:
                    await lost
            finally:
                misc.cancel()
            if not self._stopping.is_set():
                await self._wait_before_retry(f"connection to {s.describe()} lost")

    def _in_loop(self, callback: Callable[[], object]) -> None:
        """Run ``callback`` now on the loop's thread, or soon on it from any other."""
        if threading.get_ident() == self._loop_thread:
            callback()
            return
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(callback)

    def _on_socket_open(
        self, _client: paho.Client, _userdata: Any, sock: "paho.SocketLike"
    ) -> None:
        self._in_loop(lambda: self._watch(sock))

    def _on_socket_close(
        self, _client: paho.Client, _userdata: Any, sock: "paho.SocketLike"
    ) -> None:
        # On the loop's thread paho calls this before it closes the socket, so the socket is
        # unwatched while it is still open.
        self._in_loop(lambda: self._unwatch(sock))

    def _on_write_wanted(self, _client: paho.Client, _userdata: Any, _sock: Any) -> None:
        self._in_loop(self._update_writer)  # the connect's worker thread queues CONNECT

    def _watch(self, sock: "paho.SocketLike") -> None:
        assert self._loop is not None
        if self._sock is not None:
            self._unwatch(self._sock)
        self._sock, self._fd = sock, sock.fileno()
        self._lost = self._loop.create_future()
        if len(self._inbox) < self._queue_size:
            self._resume()
        self._update_writer()

    def _unwatch(self, sock: "paho.SocketLike") -> None:
        if sock is not self._sock or self._loop is None:
            return
        # From another thread paho may have closed the socket already: the selector then
        # forgets it anyway.
        if self._reading:
            with contextlib.suppress(OSError):
                self._loop.remove_reader(self._fd)
        if self._writing:
            with contextlib.suppress(OSError):
                self._loop.remove_writer(self._fd)
        self._sock, self._fd = None, -1
        self._reading = self._writing = False
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(None)

    def _check(self, rc: MQTTErrorCode) -> None:
        """After paho has read, written or kept alive: is the connection still there?"""
        # paho closes the socket on a failure (`_on_socket_close`); this is in case it did not.
        if (
            rc != MQTTErrorCode.MQTT_ERR_SUCCESS
            and self._client.socket() is None
            and self._sock is not None
        ):
            self._unwatch(self._sock)

    def _on_readable(self) -> None:
        if not self._reading:
            return  # paused, or the socket closed, since this was scheduled
        client, inbox, limit = self._client, self._inbox, self._queue_size
        waiting = len(inbox)
        rc = MQTTErrorCode.MQTT_ERR_SUCCESS
        # `loop_read` reads one packet (more while publications await their PUBACKs). Read on
        # while packets come: those already in the kernel's buffer need no wait for the selector.
        # A read that hands nothing over found the socket empty, or read some other packet, in
        # which case the selector reports the rest.
        for _ in range(BATCH_MESSAGES):
            before = self._packets
            rc = client.loop_read()
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or self._packets == before:
                break
            if len(inbox) >= limit or not self._reading:
                break
        if len(inbox) > waiting:
            self._idle.clear()
            self._arrived.set()  # the consumer takes what arrived in this wake-up together
        self._check(rc)
        if len(inbox) >= limit:
            self._pause()
        elif self._reading and self._loop is not None and _buffered(self._sock):
            self._loop.call_soon(self._on_readable)  # TLS bytes decrypted but not yet read

    def _on_writable(self) -> None:
        self._check(self._client.loop_write())
        self._update_writer()

    def _update_writer(self) -> None:
        if self._sock is None or self._loop is None:
            return
        wanted = self._client.want_write()
        if wanted and not self._writing:
            self._loop.add_writer(self._fd, self._on_writable)
        elif not wanted and self._writing:
            self._loop.remove_writer(self._fd)
        self._writing = wanted

    def _pause(self) -> None:
        """Stop reading: the inbox is full, and the broker keeps the rest."""
        if self._reading and self._loop is not None:
            self._loop.remove_reader(self._fd)
        self._reading = False

    def _resume(self) -> None:
        if self._reading or self._sock is None or self._loop is None:
            return
        self._reading = True
        self._loop.add_reader(self._fd, self._on_readable)
        if _buffered(self._sock):  # TLS bytes decrypted before the pause: the selector is blind
            self._loop.call_soon(self._on_readable)

    async def _keep_alive(self) -> None:
        while True:
            await asyncio.sleep(MISC_INTERVAL_SECONDS)
            self._check(self._client.loop_misc())
            self._update_writer()

    async def _wait_before_retry(self, why: str) -> None:
        delay = backoff_delay(self._attempt)
        self._attempt += 1
        metrics.inc("mqtt_reconnect_attempts")
        logger.warning("%s; retrying in %.1f s", why, delay)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), delay)

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
        logger.info("connected to %s", self.settings.describe())
        if self._shared_group is None:
            # MQTT 3.1.1 (no No Local, no identifiers): retained messages arrive flagged.
            client.subscribe(list(self._filters))
        else:
            live = Properties(PacketTypes.SUBSCRIBE)  # type: ignore[no-untyped-call]
            live.SubscriptionIdentifier = _LIVE
            client.subscribe(
                [
                    (
                        f"$share/{self._shared_group}/{topic}",
                        SubscribeOptions(qos=qos, retainAsPublished=True, retainHandling=2),
                    )
                    for topic, qos in self._filters
                ],
                properties=live,
            )
            snapshot = Properties(PacketTypes.SUBSCRIBE)  # type: ignore[no-untyped-call]
            snapshot.SubscriptionIdentifier = _SNAPSHOT
            _, self._snapshot_mid = client.subscribe(
                [(topic, SubscribeOptions(qos=qos, noLocal=True)) for topic, qos in self._filters],
                properties=snapshot,
            )
        self._call_in_loop(self.connected.set)
        self._call_in_loop(self.connection_changed.set)
        self._call_in_loop(lambda: self._announce(online=True))

    def _on_subscribe(
        self,
        client: paho.Client,
        _userdata: Any,
        mid: int,
        reasons: list[ReasonCode],
        _properties: Any,
    ) -> None:
        refused = [str(r) for r in reasons if r.is_failure]
        if refused:
            metrics.inc("mqtt_subscriptions_refused", amount=len(refused))
            logger.error(
                "broker %s refused subscriptions to %s: %s",
                self.settings.describe(),
                [t for t, _ in self._filters],
                refused,
            )
            return
        if mid == self._snapshot_mid:
            # The retained messages are on their way; live ones come through the share.
            client.unsubscribe([topic for topic, _ in self._filters])
            return
        shared = f" (shared as $share/{self._shared_group})" if self._shared_group else ""
        logger.info("subscribed to %s%s", [t for t, _ in self._filters], shared)

    def _on_disconnect(
        self,
        _client: paho.Client,
        _userdata: Any,
        _flags: Any,
        reason: ReasonCode,
        _properties: Any,
    ) -> None:
        self._call_in_loop(self.connected.clear)
        self._call_in_loop(self.connection_changed.set)
        if not self._stopping.is_set():
            logger.warning("disconnected from %s: %s", self.settings.describe(), reason)

    def _on_publish(
        self, _client: paho.Client, _userdata: Any, mid: int, reason: ReasonCode, _properties: Any
    ) -> None:
        self._packets += 1
        with self._acks_lock:
            future = self._pending.pop(mid, None)
            if future is None:
                self._early[mid] = reason
                return
        self._call_in_loop(lambda: self._settle(future, reason))

    def _on_message(self, client: paho.Client, _userdata: Any, message: paho.MQTTMessage) -> None:
        """A PUBLISH (QoS 2: its PUBREL) from ``loop_read``: into the inbox, unacknowledged."""
        self._packets += 1
        try:
            topic = message.topic
        except UnicodeDecodeError:  # MQTT forbids it (1.5.4); paho passes it on
            metrics.dropped("invalid_topic", "a topic that is not UTF-8")
            client.ack(message.mid, message.qos)
            return
        retain = message.retain
        snapshot = retain
        origin = content_type = None
        props = message.properties  # None with MQTT 3.1.1
        if props is not None:
            snapshot = False
            identifiers = getattr(props, "SubscriptionIdentifier", ())
            if _SNAPSHOT in identifiers and _LIVE not in identifiers:
                if not retain:
                    client.ack(message.mid, message.qos)  # a copy of one the share delivers
                    return
                snapshot = True
            for key, value in getattr(props, "UserProperty", ()):
                if key == ORIGIN_PROPERTY:
                    origin = value
            content_type = getattr(props, "ContentType", None)
        if self._draining:
            return  # not acknowledged: the broker redelivers it to the next session
        payload = message.payload
        self._inbox.append(
            Incoming(
                topic=topic,
                # paho's payload is bytes already: bytes() returns the same object, no copy.
                payload=payload if type(payload) is bytes else bytes(payload),
                qos=message.qos,
                mid=message.mid,
                retain=retain,
                snapshot=snapshot,
                origin=origin,
                content_type=content_type,
                dup=message.dup,
            )
        )

    def _call_in_loop(self, callback: Callable[[], object]) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        if threading.get_ident() == self._loop_thread:
            loop.call_soon(callback)
        else:
            loop.call_soon_threadsafe(callback)

    # The event loop.

    async def _consume(self) -> None:
        inbox, client = self._inbox, self._client
        while True:
            if not inbox:
                self._idle.set()
                self._arrived.clear()
                await self._arrived.wait()
                continue
            # Whatever has arrived goes on together: one hand-off for a burst, not one each.
            batch = inbox[:BATCH_MESSAGES]
            del inbox[:BATCH_MESSAGES]
            acknowledge = True
            try:
                await self._handler(batch)
            except asyncio.CancelledError:
                raise
            except RedeliverError:
                acknowledge = False  # the broker gives them to the next session
            except Exception:
                for incoming in batch:
                    metrics.dropped("handler_error", f"topic {incoming.topic}")
                logger.exception("handling %d messages from the broker failed", len(batch))
            if acknowledge:  # only now that they were handed on (or counted as dropped)
                for incoming in batch:
                    if incoming.qos:
                        client.ack(incoming.mid, incoming.qos)
            if len(inbox) < self._queue_size:
                self._resume()


def _buffered(sock: "paho.SocketLike | None") -> bool:
    """Whether ``sock`` holds bytes the selector cannot see (decrypted TLS records)."""
    pending = getattr(sock, "pending", None)
    return pending is not None and pending() > 0
