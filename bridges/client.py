"""The bridge's connection to the broker: an MQTT 3.1.1 and 5 client of the gateway's own.

It runs on the event loop as an asyncio protocol and reads the broker's packets with the same
codec as the embedded broker (`bridges.wire`): one read of the socket is cut into every packet it
holds, and a PUBLISH becomes an `Incoming` in one pass. What the bridge promises rests on
acknowledging by hand: a QoS 1 message is acknowledged (PUBACK; QoS 2: PUBREC) only once the
bridge has handed it on or counted it as dropped, and only on the connection that delivered it,
so a bridge that dies in between gets it again. The messages of one read wait in an inbox for
the loop's consumer, which hands them on together; while the inbox is full the connection stops
reading, so the broker (not our memory) holds the backlog. A packet larger than the largest
payload a room takes is never held whole: its head is read, the rest skipped, and the drop
counted. Reconnection is ours: capped exponential backoff with full jitter; every (re)connect
subscribes again and sends what still awaits the broker's acknowledgement, flagged DUP.

Publications wait in order while the broker is away (`MAX_QUEUED_PUBLICATIONS` at most; past that
one is refused at once) and go out within the broker's Receive Maximum.

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
import time
from collections import deque
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import Any, cast

from bridges import wire
from bridges.conf import MqttSettings
from gateway import metrics
from gateway.errors import GatewayError

logger = logging.getLogger(__name__)

SESSION_EXPIRY_SECONDS = 3600
STATUS_TIMEOUT_SECONDS = 2.0  # for the broker to confirm a stopping bridge's status
CONNECT_TIMEOUT_SECONDS = 10.0  # to open the connection, and then for the broker's CONNACK
BACKOFF_BASE_SECONDS = 0.5
BACKOFF_CAP_SECONDS = 10.0
# Publications kept while the broker is away or busy; past that a publish is refused at once.
MAX_QUEUED_PUBLICATIONS = 10_000
V3_IN_FLIGHT = 20  # publications awaiting the broker with MQTT 3.1.1, which has no Receive Maximum
BATCH_MESSAGES = 256  # messages handed on together at most
# A packet is held whole up to the largest payload a room takes plus this (topic, properties).
PACKET_OVERHEAD_BYTES = 128 * 1024
ORIGIN_PROPERTY = "gateway"
# The user property in which a device names its message: the same id on a resend makes it a
# copy (`bridges.bridge`).
MESSAGE_ID_PROPERTY = "message-id"
# Where each bridge connection says whether it is up: retained, with a last will saying "lost".
STATUS_TOPIC = "gateways/{client_id}/status"
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
        device_id: the id the device gave the message (its ``message-id`` user property), if
            any: a device's resend of a message carries the same one.
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
    device_id: str | None = None
    connection: int = 0  # which connection delivered it: it is acknowledged on that one only


# Takes the messages that arrived together, in order; they are acknowledged when it returns.
# It returns the messages it holds on to, if any: those are acknowledged when it calls
# `MqttLink.acknowledge`, the others when it returns.
Handler = Callable[[list[Incoming]], Awaitable[Collection[Incoming] | None]]


@dataclass(slots=True)
class _Publication:
    message: wire.Publish
    future: "asyncio.Future[None]"
    packet: bytes = b""  # as first sent; a resend sets the DUP flag
    released: bool = False  # QoS 2: the broker has it (PUBREC) and PUBREL went out


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection to the broker; the link reads what it receives."""

    def __init__(self, number: int, limit: int, on_data: Callable[["_Connection"], None]) -> None:
        self.number = number
        self.on_data = on_data  # reads the packets the framer holds
        self.framer = wire.Framer(limit)
        self.transport: asyncio.Transport | None = None
        self.closed: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()
        self.reading = True
        self.last_sent = self.last_received = time.monotonic()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.last_received = time.monotonic()
        self.framer.feed(data)
        self.on_data(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(exc)

    def write(self, data: bytes) -> None:
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)
            self.last_sent = time.monotonic()

    def pause(self) -> None:
        if self.reading and self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()
        self.reading = False

    def resume(self) -> None:
        if not self.reading and self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()
        self.reading = True

    def close(self) -> None:
        """Close once what was written has gone out."""
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


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
        max_payload_bytes: int = 16 * 1024 * 1024,
    ) -> None:
        self.settings = settings
        self._filters = filters
        self._handler = handler
        self._origin = origin
        self._version = 5 if settings.protocol == "5" else 4
        self._shared_group = shared_group if self.is_v5 else None
        self.max_packet_bytes = max_payload_bytes + PACKET_OVERHEAD_BYTES
        # Messages received and not yet handed on, in order. Past `_queue_size` of them the
        # connection is not read until the consumer catches up.
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
        self._network: asyncio.Task[None] | None = None
        self._consumer: asyncio.Task[None] | None = None
        self._conn: _Connection | None = None  # the connection, once the broker accepted it
        self._connections = 0  # connections opened: each one's number
        self._connack: asyncio.Future[wire.Connack] | None = None
        self._attempt = 0
        # Publications: waiting to go out, in order; sent and awaiting the broker, by packet id.
        self._queue: deque[_Publication] = deque()
        self._in_flight: dict[int, _Publication] = {}
        self._send_quota = V3_IN_FLIGHT  # the broker's Receive Maximum, with MQTT 5
        self._max_qos = 2
        self._max_out_bytes = wire.MAX_REMAINING_LENGTH
        self._keepalive = settings.keepalive
        self._last_id = 0
        self._subscribing: set[int] = set()  # SUBSCRIBE and UNSUBSCRIBE packet ids unanswered
        self._snapshot_id: int | None = None
        self._ping_sent: float | None = None
        # QoS 2 from the broker: handed on and not yet PUBREC'd (with the connection it came
        # on); PUBREC'd and awaiting PUBREL.
        self._qos2_held: dict[int, int] = {}
        self._qos2_received: set[int] = set()

    @property
    def is_v5(self) -> bool:
        return self._version == 5

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

    async def start(self) -> None:
        """Start connecting (in the background, retrying) and handing messages on."""
        self._consumer = asyncio.create_task(self._consume(), name="mqtt-consume")
        self._network = asyncio.create_task(self._run(), name="mqtt-network")

    async def stop(self, drain_seconds: float = 10.0) -> None:
        """Drain: hand on what was received, wait for publications, then disconnect."""
        self._draining = True
        try:
            await asyncio.wait_for(self._idle.wait(), drain_seconds)
            pending = [p.future for p in (*self._in_flight.values(), *self._queue)]
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
        conn = self._conn
        if conn is not None:
            conn.write(wire.CLIENT_DISCONNECT_PACKET)
            conn.close()
        elif self._network is not None:
            self._network.cancel()  # still connecting
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

        A publication waits while the broker is away and goes out after the reconnect.
        """
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if len(self._queue) + len(self._in_flight) >= MAX_QUEUED_PUBLICATIONS:
            future.set_exception(
                PublishRefusedError(
                    f"{MAX_QUEUED_PUBLICATIONS} publications already wait for the broker"
                )
            )
            return future
        properties: wire.Properties = []
        if self.is_v5:
            properties.append((wire.USER_PROPERTY, (ORIGIN_PROPERTY, self._origin)))
            if content_type:
                properties.append((wire.CONTENT_TYPE, content_type))
        message = wire.Publish(topic, payload, qos, retain, properties=properties)
        self._queue.append(_Publication(message, future))
        self._pump()
        return future

    def _pump(self) -> None:
        """Send the publications that wait, in order, while the broker's quota allows."""
        conn, queue, in_flight = self._conn, self._queue, self._in_flight
        if conn is None:
            return
        out = []
        while queue and len(in_flight) < self._send_quota:
            publication = queue.popleft()
            message = publication.message
            message.qos = min(message.qos, self._max_qos)
            if message.qos:
                message.packet_id = self._next_id()
            packet = wire.publish(message, self._version)
            if len(packet) > self._max_out_bytes:
                _settle(publication.future, 0x95)
                continue
            publication.packet = packet
            out.append(packet)
            if message.qos:
                in_flight[message.packet_id] = publication
            else:
                _settle(publication.future, 0)
        conn.write(b"".join(out))

    def _next_id(self) -> int:
        busy = self._in_flight.keys() | self._subscribing
        while True:  # fewer than 65,535 ids are ever busy: one is free
            self._last_id = self._last_id % 65_535 + 1
            if self._last_id not in busy:
                return self._last_id

    # The connection.

    async def _run(self) -> None:
        s = self.settings
        while not self._stopping.is_set():
            try:
                conn = await asyncio.wait_for(self._open(), CONNECT_TIMEOUT_SECONDS)
            except (OSError, ssl.SSLError, TimeoutError) as exc:
                await self._wait_before_retry(f"cannot reach broker {s.describe()}: {exc}")
                continue
            why = "connection to {} lost"
            try:
                if await self._handshake(conn):
                    keep_alive = asyncio.create_task(self._keep_alive(conn), name="mqtt-ping")
                    try:
                        await conn.closed
                    finally:
                        keep_alive.cancel()
                else:
                    why = "connection to {} refused"
            finally:
                conn.abort()  # if it is still open: a refusal, a cancel
                self._disconnected(conn)
            if not self._stopping.is_set():
                await self._wait_before_retry(why.format(s.describe()))

    async def _open(self) -> _Connection:
        s = self.settings
        context = None
        if s.tls:
            context = ssl.create_default_context(cafile=s.ca_certs)
            if s.certfile:
                context.load_cert_chain(s.certfile, s.keyfile)
        self._connections += 1
        number = self._connections
        limit = self.max_packet_bytes
        _, conn = await asyncio.get_running_loop().create_connection(
            lambda: _Connection(number, limit, self._read), s.host, s.port, ssl=context
        )
        return conn

    async def _handshake(self, conn: _Connection) -> bool:
        """CONNECT, and the broker's CONNACK: whether it accepted the connection."""
        s = self.settings
        will = wire.Will(self.status_topic, self._status(online=False, reason="lost"), 1, True)
        properties: wire.Properties = []
        if self.is_v5:
            properties.append((wire.SESSION_EXPIRY, SESSION_EXPIRY_SECONDS))
        self._connack = asyncio.get_running_loop().create_future()
        conn.write(
            wire.connect(
                wire.Connect(
                    version=self._version,
                    client_id=s.client_id,
                    clean_start=False,
                    keepalive=s.keepalive,
                    username=s.username,
                    password=None if s.password is None else s.password.encode(),
                    will=will,
                    properties=properties,
                )
            )
        )
        answers: list[asyncio.Future[Any]] = [self._connack, conn.closed]
        done, _ = await asyncio.wait(
            answers,
            timeout=CONNECT_TIMEOUT_SECONDS,
            return_when=asyncio.FIRST_COMPLETED,
        )
        if self._connack not in done:
            logger.warning(
                "broker %s did not accept the connection within %.0f s (%s)",
                s.describe(),
                CONNECT_TIMEOUT_SECONDS,
                "it closed it" if conn.closed in done else "no CONNACK",
            )
            return False
        connack = self._connack.result()
        if connack.reason:
            hint = ""
            if connack.reason in (0x01, 0x84) and self.is_v5:
                hint = " (the broker may only speak MQTT 3.1.1: set MQTT_PROTOCOL=3.1.1)"
            name = wire.reason_name(connack.reason, v3_connack=not self.is_v5)
            logger.error("broker %s refused the connection: %s%s", s.describe(), name, hint)
            return False
        if self._stopping.is_set():
            conn.write(wire.CLIENT_DISCONNECT_PACKET)  # stopped while connecting
            return False
        return True  # `_connected` ran as the CONNACK was read, before what came after it

    def _connected(self, conn: _Connection, connack: wire.Connack) -> None:
        self._conn = conn
        self._attempt = 0
        self._ping_sent = None

        def granted(ident: int, default: int) -> int:
            value = wire.property_value(connack.properties, ident)
            return default if value is None else int(cast(int, value))

        # What the broker allows (MQTT 5's CONNACK properties; 3.1.1 says nothing of them).
        self._send_quota = granted(wire.RECEIVE_MAXIMUM, 65_535 if self.is_v5 else V3_IN_FLIGHT)
        self._max_qos = granted(wire.MAXIMUM_QOS, 2)
        self._max_out_bytes = granted(wire.MAXIMUM_PACKET_SIZE, wire.MAX_REMAINING_LENGTH)
        self._keepalive = granted(wire.SERVER_KEEP_ALIVE, self.settings.keepalive)
        metrics.inc("mqtt_connects")
        logger.info("connected to %s", self.settings.describe())
        self._subscribe(conn)
        # What the broker has not acknowledged goes again, flagged as sent before.
        for packet_id, publication in self._in_flight.items():
            if publication.released:
                conn.write(wire.ack(wire.PUBREL, packet_id, self._version))
            else:
                conn.write(bytes([publication.packet[0] | wire.DUP_FLAG]) + publication.packet[1:])
        self._pump()
        if len(self._inbox) >= self._queue_size:
            conn.pause()
        self.connected.set()
        self.connection_changed.set()
        self._announce(online=True)

    def _disconnected(self, conn: _Connection) -> None:
        if self._conn is not conn:
            return
        self._conn = None
        self._subscribing.clear()
        self.connected.clear()
        self.connection_changed.set()
        if not self._stopping.is_set():
            exc = conn.closed.result() if conn.closed.done() else None
            logger.warning(
                "disconnected from %s%s", self.settings.describe(), f": {exc}" if exc else ""
            )

    def _subscribe(self, conn: _Connection) -> None:
        if self._shared_group is None:
            # MQTT 3.1.1 (no No Local, no identifiers): retained messages arrive flagged.
            subscriptions = [wire.Subscription(topic, qos) for topic, qos in self._filters]
            conn.write(self._subscribe_packet(self._subscription_id(), subscriptions, None))
            self._snapshot_id = None
            return
        live = [
            wire.Subscription(
                f"$share/{self._shared_group}/{topic}",
                qos,
                retain_as_published=True,
                retain_handling=2,
            )
            for topic, qos in self._filters
        ]
        conn.write(self._subscribe_packet(self._subscription_id(), live, _LIVE))
        snapshot = [wire.Subscription(topic, qos, no_local=True) for topic, qos in self._filters]
        self._snapshot_id = self._subscription_id()
        conn.write(self._subscribe_packet(self._snapshot_id, snapshot, _SNAPSHOT))

    def _subscription_id(self) -> int:
        """A packet id for a SUBSCRIBE or UNSUBSCRIBE, busy until the broker answers it."""
        packet_id = self._next_id()
        self._subscribing.add(packet_id)
        return packet_id

    def _subscribe_packet(
        self, packet_id: int, subscriptions: list[wire.Subscription], ident: int | None
    ) -> bytes:
        properties: wire.Properties = [] if ident is None else [(wire.SUBSCRIPTION_ID, ident)]
        return wire.subscribe(wire.Subscribe(packet_id, subscriptions, properties), self._version)

    async def _keep_alive(self, conn: _Connection) -> None:
        """Ping when the line has been quiet; close it when a ping goes unanswered."""
        keepalive = self._keepalive
        if not keepalive:
            return
        while True:
            await asyncio.sleep(keepalive / 4)
            now = time.monotonic()
            if self._ping_sent is not None:
                if now - self._ping_sent > keepalive:
                    logger.warning("broker %s answers no ping", self.settings.describe())
                    conn.abort()
                    return
            elif min(now - conn.last_sent, now - conn.last_received) >= keepalive / 2:
                self._ping_sent = now
                conn.write(wire.PINGREQ_PACKET)

    async def _wait_before_retry(self, why: str) -> None:
        delay = backoff_delay(self._attempt)
        self._attempt += 1
        metrics.inc("mqtt_reconnect_attempts")
        logger.warning("%s; retrying in %.1f s", why, delay)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), delay)

    # Reading.

    def _read(self, conn: _Connection) -> None:
        """Take the packets ``conn`` has received, until the inbox is full."""
        inbox, limit, framer = self._inbox, self._queue_size, conn.framer
        waiting = len(inbox)
        try:
            while len(inbox) < limit:
                packet = framer.next()
                if packet is None:
                    break
                if type(packet) is tuple:
                    first, body = packet
                    if first >> 4 == wire.PUBLISH:
                        self._on_publish(conn, first, body)
                    else:
                        self._on_control(conn, wire.parse_from_server(first, body, self._version))
                else:
                    self._on_oversized(conn, cast(wire.Oversized, packet))
        except wire.MalformedError as exc:
            # The broker's fault, not the bridge's: no traceback.
            logger.error("broker %s broke the protocol: %s", self.settings.describe(), exc)  # noqa: TRY400
            conn.abort()
        if len(inbox) > waiting:
            self._idle.clear()
            self._arrived.set()  # the consumer takes what arrived in this read together
        if len(inbox) >= limit:
            conn.pause()

    def _on_publish(self, conn: _Connection, first: int, body: bytes) -> None:
        """A PUBLISH: into the inbox, unacknowledged."""
        try:
            message = wire.parse_publish(first, body, self._version)
        except wire.TopicError as exc:  # MQTT forbids it (1.5.4); a broker may pass it on
            metrics.dropped("invalid_topic", f"a topic that is {exc}")
            self._acknowledge_now(conn, exc.qos, exc.packet_id)
            return
        qos, packet_id = message.qos, message.packet_id
        if not message.topic:
            raise wire.MalformedError("a topic alias, which the bridge does not allow", 0x94)
        if qos == 2:
            if packet_id in self._qos2_received:  # the broker missed our PUBREC
                conn.write(wire.ack(wire.PUBREC, packet_id, self._version))
                return
            if self._qos2_held.get(packet_id) == conn.number:  # the first is on its way
                return
            # Held from an earlier connection, it can no longer be acknowledged there: this
            # redelivery is handed on (a copy by its id) and acknowledged in its place.
        retain = message.retain
        snapshot = retain and not self.is_v5
        origin = content_type = device_id = None
        if message.properties:
            identifiers, origin, content_type, device_id = _read_properties(message.properties)
            if _SNAPSHOT in identifiers and _LIVE not in identifiers:
                if not retain:
                    self._acknowledge_now(conn, qos, packet_id)  # a copy the share delivers
                    return
                snapshot = True
        if self._draining:
            return  # not acknowledged: the broker redelivers it to the next session
        if qos == 2:
            self._qos2_held[packet_id] = conn.number
        self._inbox.append(
            Incoming(
                topic=message.topic,
                payload=message.payload,
                qos=qos,
                mid=packet_id,
                retain=retain,
                snapshot=snapshot,
                origin=origin,
                content_type=content_type,
                dup=message.dup,
                device_id=device_id,
                connection=conn.number,
            )
        )

    def _on_oversized(self, conn: _Connection, packet: wire.Oversized) -> None:
        if packet.first >> 4 != wire.PUBLISH:
            raise wire.MalformedError(f"a control packet of {packet.length} bytes")
        qos, packet_id = wire.oversized_publish(packet)
        metrics.dropped(
            "payload_too_big",
            f"a PUBLISH of {packet.length} bytes, over the {self.max_packet_bytes} held",
        )
        self._acknowledge_now(conn, qos, packet_id)

    def _on_control(self, conn: _Connection, packet: wire.ServerPacket) -> None:
        kind = type(packet)
        if kind is wire.Ack:
            ack = cast(wire.Ack, packet)
            if ack.kind == wire.PUBREL:  # QoS 2 from the broker: it is done
                self._qos2_received.discard(ack.packet_id)
                conn.write(wire.ack(wire.PUBCOMP, ack.packet_id, self._version))
                return
            publication = self._in_flight.get(ack.packet_id)
            if ack.kind == wire.PUBREC and ack.reason < 0x80:
                conn.write(wire.ack(wire.PUBREL, ack.packet_id, self._version))
                if publication is not None:
                    publication.released = True
                return
            if publication is not None:
                del self._in_flight[ack.packet_id]
                _settle(publication.future, ack.reason)
                self._pump()
        elif kind is wire.Connack:
            connack = cast(wire.Connack, packet)
            if self._connack is None or self._connack.done():
                raise wire.MalformedError("a second CONNACK", 0x82)
            if not connack.reason and not self._stopping.is_set():
                self._connected(conn, connack)
            self._connack.set_result(connack)
        elif kind is wire.Granted:
            self._on_granted(conn, cast(wire.Granted, packet))
        elif kind is wire.Ping:
            self._ping_sent = None
        elif kind is wire.Disconnect:
            reason = cast(wire.Disconnect, packet).reason
            logger.warning(
                "broker %s disconnected the bridge: %s",
                self.settings.describe(),
                wire.reason_name(reason),
            )
            conn.abort()
        else:
            raise wire.MalformedError(f"a server may not send {kind.__name__}", 0x82)

    def _on_granted(self, conn: _Connection, granted: wire.Granted) -> None:
        self._subscribing.discard(granted.packet_id)
        if granted.kind == wire.UNSUBACK:
            return
        refused = [wire.reason_name(code) for code in granted.codes if code >= 0x80]
        if refused:
            metrics.inc("mqtt_subscriptions_refused", amount=len(refused))
            logger.error(
                "broker %s refused subscriptions to %s: %s",
                self.settings.describe(),
                [t for t, _ in self._filters],
                refused,
            )
            return
        if granted.packet_id == self._snapshot_id:
            # The retained messages are on their way; live ones come through the share.
            filters = [topic for topic, _ in self._filters]
            unsubscribe = wire.Unsubscribe(self._subscription_id(), filters)
            conn.write(wire.unsubscribe(unsubscribe, self._version))
            return
        shared = f" (shared as $share/{self._shared_group})" if self._shared_group else ""
        logger.info("subscribed to %s%s", [t for t, _ in self._filters], shared)

    # Acknowledging.

    def _acknowledgement(self, qos: int, packet_id: int) -> bytes:
        """What acknowledges a QoS 1 or 2 message: PUBACK, or PUBREC (QoS 2, which is then
        awaiting the broker's PUBREL)."""
        if qos == 1:
            return wire.ack(wire.PUBACK, packet_id, self._version)
        self._qos2_held.pop(packet_id, None)
        self._qos2_received.add(packet_id)
        return wire.ack(wire.PUBREC, packet_id, self._version)

    def _acknowledge_now(self, conn: _Connection, qos: int, packet_id: int) -> None:
        """Acknowledge a message the bridge will not hand on (counted where it was dropped)."""
        if qos:
            conn.write(self._acknowledgement(qos, packet_id))

    def acknowledge(self, messages: Collection[Incoming]) -> None:
        """Acknowledge messages the handler held on to, now that they were handed on.

        They may be acknowledged after messages that came later (MQTT asks for the order they
        came in; brokers match acknowledgements by packet id)."""
        self._acknowledge(messages)

    def _acknowledge(self, batch: Collection[Incoming]) -> None:
        """Acknowledge what was handed on, on the connection that delivered it, if still up."""
        conn = self._conn
        number = conn.number if conn is not None else None
        for incoming in batch:  # the broker delivers these again, on the connection after
            stale = incoming.qos == 2 and incoming.connection != number
            if stale and self._qos2_held.get(incoming.mid) == incoming.connection:
                del self._qos2_held[incoming.mid]
        if conn is None:
            return
        conn.write(
            b"".join(
                self._acknowledgement(incoming.qos, incoming.mid)
                for incoming in batch
                if incoming.qos and incoming.connection == conn.number
            )
        )

    # The event loop.

    async def _consume(self) -> None:
        inbox = self._inbox
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
            held: Collection[Incoming] | None = None
            try:
                held = await self._handler(batch)
            except asyncio.CancelledError:
                raise
            except RedeliverError:
                acknowledge = False  # the broker gives them to the next session
            except Exception:
                for incoming in batch:
                    metrics.dropped("handler_error", f"topic {incoming.topic}")
                logger.exception("handling %d messages from the broker failed", len(batch))
            if acknowledge:  # only now that they were handed on (or counted as dropped)
                if held:
                    kept = {id(incoming) for incoming in held}
                    batch = [incoming for incoming in batch if id(incoming) not in kept]
                self._acknowledge(batch)
            conn = self._conn
            if conn is not None and not conn.reading and len(inbox) < self._queue_size:
                conn.resume()
                self._read(conn)  # what the last read left in the framer


def _read_properties(
    properties: wire.Properties,
) -> tuple[list[int], str | None, str | None, str | None]:
    """A PUBLISH's subscription identifiers, origin, content type and device message id."""
    identifiers: list[int] = []
    origin = content_type = device_id = None
    for key, value in properties:
        if key == wire.SUBSCRIPTION_ID:
            identifiers.append(cast(int, value))
        elif key == wire.USER_PROPERTY:
            name, text = cast(tuple[str, str], value)
            if name == ORIGIN_PROPERTY:
                origin = text
            elif name == MESSAGE_ID_PROPERTY:
                device_id = text
        elif key == wire.CONTENT_TYPE:
            content_type = cast(str, value)
    return identifiers, origin, content_type, device_id


def _settle(future: "asyncio.Future[None]", reason: int) -> None:
    """Settle a publication's future with the broker's reason code."""
    if future.done():
        return
    if reason >= 0x80:
        future.set_exception(PublishRefusedError(wire.reason_name(reason)))
    else:
        future.set_result(None)
