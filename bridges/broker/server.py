"""The embedded MQTT broker: MQTT 3.1.1 and 5 for one machine, with the gateway's decisions.

It keeps everything in memory: sessions (persistent ones while they have not expired),
subscriptions (shared ones included), messages queued for offline persistent sessions,
retained messages, wills. Who may connect, publish, subscribe and receive is asked of an
`Authorizer` (the gateway's permission model, or `OpenDoor` for a broker that lets anyone do
anything); `Broker.kick` disconnects the clients that may no longer connect.

Bounds: `Limits` caps packets, sessions, queued and in-flight messages per session, retained
messages, and what waits in a slow client's send buffer; what is refused or dropped is counted.
"""

import asyncio
import itertools
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from bridges import wire
from bridges.wire import Ack, Connect, Disconnect, Ping, Publish, Subscribe, Unsubscribe
from gateway import metrics
from gateway.mqtt_acl import is_valid_topic, matches

logger = logging.getLogger(__name__)

NOT_AUTHORIZED_V4, BAD_CREDENTIALS_V4, IDENTIFIER_REJECTED_V4 = 5, 4, 2
NOT_AUTHORIZED, BAD_CREDENTIALS, ADMINISTRATIVE_ACTION, SESSION_TAKEN_OVER = 0x87, 0x86, 0x98, 0x8E
NO_SUBSCRIPTION, TOPIC_FILTER_INVALID, QUOTA_EXCEEDED = 0x11, 0x8F, 0x97


class Authorizer(Protocol):
    """The broker's questions to whoever decides."""

    async def authenticate(self, connect: Connect) -> Any | None:
        """The identity of a connecting client, or None to refuse it."""
        ...

    def may(self, identity: Any, action: str, topic: str) -> bool:
        """Whether ``identity`` may ``publish``, ``subscribe`` or ``receive`` on ``topic``."""
        ...

    def may_connect(self, identity: Any) -> bool:
        """Whether ``identity`` may still be connected (checked by `Broker.kick`)."""
        ...


class OpenDoor:
    """Anyone may do anything: for a broker on loopback, and for the contract tests."""

    async def authenticate(self, connect: Connect) -> Any | None:
        return "anyone"

    def may(self, identity: Any, action: str, topic: str) -> bool:
        return True

    def may_connect(self, identity: Any) -> bool:
        return True


@dataclass(frozen=True)
class Limits:
    max_packet_bytes: int = 1024 * 1024
    max_sessions: int = 10_000
    max_connections: int = 10_000  # open sockets, CONNECT sent or not
    max_queued: int = 1_000  # QoS 1 and 2 messages kept for a session that is away
    max_inflight: int = 100
    max_retained: int = 100_000
    max_send_buffer: int = 8 * 1024 * 1024  # bytes waiting for a client that does not read
    # Persistent sessions expire at the latest after this (MQTT 3.1.1 ones, and MQTT 5 ones that
    # ask for longer or for never); a full session table forgets the longest away first.
    max_session_expiry: float = 24 * 3600.0
    connect_timeout: float = 10.0


@dataclass(slots=True)
class Message:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    properties: wire.Properties
    origin: str | None  # the publishing client id (for No Local)


@dataclass
class Session:
    client_id: str
    identity: Any = None
    subscriptions: dict[str, wire.Subscription] = field(default_factory=dict)
    queue: deque[tuple[Message, int, bool]] = field(default_factory=deque)
    inflight: dict[int, tuple[Publish, bool]] = field(default_factory=dict)  # id -> (msg, released)
    incoming: set[int] = field(default_factory=set)  # QoS 2 ids awaiting PUBREL
    expiry: float = 0.0
    connection: "Connection | None" = None
    expire_timer: asyncio.TimerHandle | None = None
    will_timer: asyncio.TimerHandle | None = None
    last_id: int = 0
    left_at: float = 0.0  # monotonic time its connection ended

    def next_id(self) -> int:
        """A packet id not in flight (in-flight messages are far fewer than 65,535)."""
        for _ in range(65535):
            self.last_id = self.last_id % 65535 + 1
            if self.last_id not in self.inflight:
                return self.last_id
        raise RuntimeError("no free packet id")


class Broker:
    """Sessions, subscriptions and retained messages, and the listener that serves them."""

    def __init__(self, authorizer: Authorizer | None = None, limits: Limits | None = None) -> None:
        self.authorizer: Authorizer = authorizer or OpenDoor()
        self.limits = limits or Limits()
        self.sessions: dict[str, Session] = {}
        self.shared: dict[tuple[str, str], list[str]] = {}  # (group, filter) -> client ids
        self.retained: dict[str, Message] = {}
        self._turn = itertools.count()
        self._server: asyncio.Server | None = None
        self._connections: set[Connection] = set()

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(self._serve, host, port)

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        closing = getattr(self.authorizer, "close", None)
        if closing is not None:
            await closing()
        if self._server is not None:
            self._server.close()
        for connection in list(self._connections):
            connection.close()
        if self._server is not None:
            await self._server.wait_closed()

    def kick(self) -> int:
        """Disconnect every client that may no longer connect; how many."""
        kicked = 0
        for connection in list(self._connections):
            if connection.session is not None and not self.authorizer.may_connect(
                connection.session.identity
            ):
                connection.close(ADMINISTRATIVE_ACTION, send_will=False)
                connection.ended()  # its session goes now, whatever the socket does
                kicked += 1
        return kicked

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._connections) >= self.limits.max_connections:
            metrics.inc("embedded_broker_refused", "too_many_connections")
            writer.close()
            return
        connection = Connection(self, reader, writer)
        self._connections.add(connection)
        try:
            await connection.run()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except TimeoutError:
            metrics.inc("embedded_broker_refused", "no_connect")
        except wire.MalformedError as exc:
            metrics.inc("embedded_broker_refused", "malformed")
            logger.info("embedded broker: closing a client: %s", exc)
            if exc.reason == 0x84 and connection.version == 0:
                # An unknown protocol version: answered as MQTT 3.1.1 does ("unacceptable").
                writer.write(wire.connack(4, 1, session_present=False, properties=[]))
            connection.close(exc.reason)
        except Exception:
            logger.exception("embedded broker: a connection failed")
        finally:
            self._connections.discard(connection)
            connection.ended()
            if not writer.is_closing():
                writer.transport.abort()

    # Routing.

    def publish(self, message: Message) -> None:
        """Keep ``message`` if retained, and hand it to every subscriber that may receive it."""
        if message.retain:
            if not message.payload:
                self.retained.pop(message.topic, None)
            elif message.topic in self.retained or len(self.retained) < self.limits.max_retained:
                self.retained[message.topic] = message
            else:
                metrics.inc("embedded_broker_dropped", "retained_full")
        for client_id, (qos, rap, ids) in self._targets(message).items():
            session = self.sessions[client_id]
            if self.authorizer.may(session.identity, "receive", message.topic):
                self.deliver(session, message, qos, retain=rap and message.retain, ids=ids)

    def _targets(self, message: Message) -> dict[str, tuple[int, bool, tuple[int, ...]]]:
        """Client id -> (QoS, retain as published, subscription identifiers) of every session
        the message goes to.

        A client with several matching subscriptions gets the message once, at the highest of
        their QoS, with each one's identifier; a shared subscription gives it to one member.
        """
        targets: dict[str, tuple[int, bool, tuple[int, ...]]] = {}

        def add(client_id: str, sub: wire.Subscription) -> None:
            qos, rap, ids = targets.get(client_id, (-1, False, ()))
            more = (sub.identifier,) if sub.identifier else ()
            targets[client_id] = (
                max(qos, min(sub.qos, message.qos)),
                rap or sub.retain_as_published,
                ids + more,
            )

        for session in self.sessions.values():
            for topic_filter, sub in session.subscriptions.items():
                if not matches(topic_filter, message.topic):
                    continue
                if sub.no_local and session.client_id == message.origin:
                    continue
                add(session.client_id, sub)
        for (group, topic_filter), members in self.shared.items():
            if not members or not matches(topic_filter, message.topic):
                continue
            chosen = self._pick(members, message.topic)
            if chosen is None:
                continue
            shared_sub = self.sessions[chosen].subscriptions.get(f"$share/{group}/{topic_filter}")
            if shared_sub is not None:
                add(chosen, shared_sub)
        return targets

    def _pick(self, members: list[str], topic: str) -> str | None:
        """One member of a shared subscription, in turn, preferring connected ones."""
        turn = next(self._turn)
        ordered = members[turn % len(members) :] + members[: turn % len(members)]
        allowed = [
            m for m in ordered if self.authorizer.may(self.sessions[m].identity, "receive", topic)
        ]
        connected = [m for m in allowed if self.sessions[m].connection is not None]
        chosen = connected or allowed
        return chosen[0] if chosen else None

    def deliver(
        self,
        session: Session,
        message: Message,
        qos: int,
        *,
        retain: bool,
        ids: tuple[int, ...] = (),
    ) -> None:
        if ids:  # this subscriber's subscription identifiers travel with its copy
            extra: wire.Properties = [(wire.SUBSCRIPTION_ID, i) for i in ids]
            message = Message(message.topic, message.payload, message.qos, message.retain,
                              message.properties + extra, message.origin)  # fmt: skip
        connection = session.connection
        if qos == 0:
            if connection is not None:
                connection.send_publish(Publish(message.topic, message.payload, 0, retain,
                                                properties=message.properties))  # fmt: skip
            return
        if connection is not None and len(session.inflight) < connection.send_quota:
            connection.send_new(message, qos, retain)
        elif len(session.queue) < self.limits.max_queued:
            session.queue.append((message, qos, retain))
        else:
            metrics.inc("embedded_broker_dropped", "queue_full")

    def send_retained(self, session: Session, sub: wire.Subscription) -> None:
        ids = (sub.identifier,) if sub.identifier else ()
        for topic, message in list(self.retained.items()):
            if matches(sub.topic_filter, topic) and self.authorizer.may(
                session.identity, "receive", topic
            ):
                self.deliver(session, message, min(sub.qos, message.qos), retain=True, ids=ids)

    # Sessions.

    def attach(self, connection: "Connection", connect: Connect, identity: Any) -> bool:
        """Give ``connection`` its session (new or resumed); whether one was resumed."""
        old = self.sessions.get(connect.client_id)
        if old is not None and old.connection is not None:
            old.connection.close(SESSION_TAKEN_OVER)
            old.connection.ended()
        if old is not None:
            for timer in (old.expire_timer, old.will_timer):
                if timer is not None:
                    timer.cancel()
            old.expire_timer = old.will_timer = None
        # A session belongs to the identity that made it: another one (same client id, other
        # credentials) starts afresh rather than receive what was kept for the first.
        if old is not None and (connect.clean_start or old.identity != identity):
            self._forget(old)
            old = None
        present = old is not None
        session = old or Session(connect.client_id)
        session.identity, session.connection = identity, connection
        self.sessions[connect.client_id] = session
        for topic_filter in session.subscriptions:
            self.share(session.client_id, topic_filter)
        return present

    def make_room(self) -> bool:
        """Whether a new session fits; when the table is full, the session that has been away
        longest is forgotten for it (connected ones never are)."""
        if len(self.sessions) < self.limits.max_sessions:
            return True
        away = [s for s in self.sessions.values() if s.connection is None]
        if not away:
            return False
        oldest = min(away, key=lambda s: s.left_at)
        metrics.inc("embedded_broker_dropped", "session_evicted")
        self._forget(oldest)
        return True

    def detach(self, session: Session) -> None:
        """The session's connection ended: keep the session until it expires, or forget it."""
        session.connection = None
        session.left_at = time.monotonic()
        if session.expiry <= 0:
            self._forget(session)
        else:
            loop = asyncio.get_running_loop()
            session.expire_timer = loop.call_later(session.expiry, self._expire, session)

    def _expire(self, session: Session) -> None:
        if self.sessions.get(session.client_id) is session and session.connection is None:
            self._forget(session)

    def _forget(self, session: Session) -> None:
        for topic_filter in list(session.subscriptions):
            self.unshare(session.client_id, topic_filter)
        if self.sessions.get(session.client_id) is session:
            del self.sessions[session.client_id]
        if session.will_timer is not None:
            session.will_timer.cancel()

    def share(self, client_id: str, topic_filter: str) -> None:
        shared = split_shared(topic_filter)
        if shared is not None:
            members = self.shared.setdefault(shared, [])
            if client_id not in members:
                members.append(client_id)

    def unshare(self, client_id: str, topic_filter: str) -> None:
        shared = split_shared(topic_filter)
        if shared is not None and client_id in self.shared.get(shared, []):
            self.shared[shared].remove(client_id)
            if not self.shared[shared]:
                del self.shared[shared]


def split_shared(topic_filter: str) -> tuple[str, str] | None:
    """(group, filter) of ``$share/<group>/<filter>``; None for other filters."""
    if not topic_filter.startswith("$share/"):
        return None
    parts = topic_filter.split("/", 2)
    return (parts[1], parts[2]) if len(parts) == 3 else (parts[1] if len(parts) > 1 else "", "")


def valid_filter(topic_filter: str) -> bool:
    shared = split_shared(topic_filter)
    if shared is None:
        return is_valid_topic(topic_filter, wildcards=True)
    group, rest = shared
    return bool(group) and not {"+", "#"} & set(group) and is_valid_topic(rest, wildcards=True)


class Connection:
    """One client's network connection."""

    def __init__(
        self, broker: Broker, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.broker, self.reader, self.writer = broker, reader, writer
        self.version = 0
        self.session: Session | None = None
        self.will: wire.Will | None = None
        self.will_delay = 0.0
        self.send_quota = broker.limits.max_inflight
        self.max_out_bytes = wire.MAX_REMAINING_LENGTH
        self.closed = False

    async def run(self) -> None:
        first, body = await asyncio.wait_for(self._read(), self.broker.limits.connect_timeout)
        packet = wire.parse(first, body, 0)
        if not isinstance(packet, Connect):
            raise wire.MalformedError("the first packet must be CONNECT", 0x82)
        if not await self._connect(packet):
            return
        idle = packet.keepalive * 1.5 if packet.keepalive else None
        while not self.closed:
            try:
                first, body = await asyncio.wait_for(self._read(), idle)
            except TimeoutError:
                logger.info("embedded broker: %s kept silent too long", packet.client_id)
                self.close(0x8D)
                return
            if not self._handle(wire.parse(first, body, self.version)):
                return

    async def _read(self) -> tuple[int, bytes]:
        header = await self.reader.readexactly(2)
        length = wire.remaining_length(header)
        while length is None:
            header += await self.reader.readexactly(1)
            length = wire.remaining_length(header)
        if length + len(header) > self.broker.limits.max_packet_bytes:
            raise wire.MalformedError(f"a packet of {length} bytes is too large", 0x95)
        return header[0], await self.reader.readexactly(length)

    async def _connect(self, connect: Connect) -> bool:
        self.version = connect.version
        v5 = connect.version == 5
        assigned = None
        if not connect.client_id:
            if not v5 and not connect.clean_start:
                self._refuse(IDENTIFIER_REJECTED_V4, 0x85)
                return False
            assigned = connect.client_id = f"auto-{secrets.token_hex(8)}"
        broker = self.broker
        if connect.client_id not in broker.sessions and not broker.make_room():
            metrics.inc("embedded_broker_refused", "too_many_sessions")
            self._refuse(3, 0x97)
            return False
        identity = await broker.authorizer.authenticate(connect)
        if identity is None:
            metrics.inc("embedded_broker_refused", "not_authorised")
            self._refuse(NOT_AUTHORIZED_V4, NOT_AUTHORIZED)
            return False
        will = connect.will
        if will is not None and not (
            is_valid_topic(will.topic, wildcards=False)
            and broker.authorizer.may(identity, "publish", will.topic)
        ):
            metrics.inc("embedded_broker_refused", "will_not_allowed")
            self._refuse(NOT_AUTHORIZED_V4, NOT_AUTHORIZED)
            return False
        self.will = will
        if will is not None:
            self.will_delay = float(wire.property_value(will.properties, wire.WILL_DELAY) or 0)  # type: ignore[arg-type]
        present = broker.attach(self, connect, identity)
        session = self.session = broker.sessions[connect.client_id]
        if v5:
            expiry = int(wire.property_value(connect.properties, wire.SESSION_EXPIRY) or 0)  # type: ignore[arg-type]
            session.expiry = min(float(expiry), broker.limits.max_session_expiry)
            receive_max = wire.property_value(connect.properties, wire.RECEIVE_MAXIMUM)
            if isinstance(receive_max, int) and receive_max:
                self.send_quota = min(receive_max, broker.limits.max_inflight)
            max_packet = wire.property_value(connect.properties, wire.MAXIMUM_PACKET_SIZE)
            if isinstance(max_packet, int) and max_packet:
                self.max_out_bytes = max_packet
        else:
            session.expiry = 0.0 if connect.clean_start else broker.limits.max_session_expiry
        properties: wire.Properties = [
            (wire.MAXIMUM_PACKET_SIZE, broker.limits.max_packet_bytes),
            (wire.RECEIVE_MAXIMUM, broker.limits.max_inflight),
        ]
        if assigned is not None:
            properties.append((wire.ASSIGNED_CLIENT_ID, assigned))
        self.write(wire.connack(self.version, 0, session_present=present, properties=properties))
        if present:
            self._resume(session)
        return True

    def _refuse(self, code_v4: int, reason_v5: int) -> None:
        code = reason_v5 if self.version == 5 else code_v4
        self.write(wire.connack(self.version, code, session_present=False, properties=[]))
        self.closed = True
        self.writer.close()

    def _resume(self, session: Session) -> None:
        """Send again what the client had not acknowledged, then what waited for it."""
        may = self.broker.authorizer.may
        for packet_id, (message, released) in list(session.inflight.items()):
            if released:
                self.write(wire.ack(wire.PUBREL, packet_id, self.version))
            elif may(session.identity, "receive", message.topic):
                message.dup = True
                self.send_publish(message)
            else:
                del session.inflight[packet_id]
        self.pump()

    def pump(self) -> None:
        session = self.session
        assert session is not None
        may = self.broker.authorizer.may
        while session.queue and len(session.inflight) < self.send_quota and not self.closed:
            message, qos, retain = session.queue.popleft()
            # Asked again: access may have changed while the message waited.
            if may(session.identity, "receive", message.topic):
                self.send_new(message, qos, retain)

    def send_new(self, message: Message, qos: int, retain: bool) -> None:
        assert self.session is not None
        packet_id = self.session.next_id()
        publish = Publish(
            message.topic, message.payload, qos, retain, False, packet_id, message.properties
        )
        self.session.inflight[packet_id] = (publish, False)
        self.send_publish(publish)

    def send_publish(self, message: Publish) -> None:
        data = wire.publish(message, self.version)
        if len(data) > self.max_out_bytes:
            metrics.inc("embedded_broker_dropped", "too_large_for_client")
            if self.session is not None:
                self.session.inflight.pop(message.packet_id, None)
            return
        self.write(data)

    def write(self, data: bytes) -> None:
        if self.closed:
            return
        if self.writer.transport.get_write_buffer_size() > self.broker.limits.max_send_buffer:
            metrics.inc("embedded_broker_dropped", "slow_client")
            logger.info("embedded broker: closing a client that does not read")
            self.close(QUOTA_EXCEEDED, abort=True)
            return
        self.writer.write(data)

    def _handle(self, packet: wire.Packet) -> bool:
        """Act on one packet; False once the connection is to end."""
        session = self.session
        assert session is not None
        if isinstance(packet, Publish):
            self._publish(packet)
        elif isinstance(packet, Ack):
            self._ack(packet)
        elif isinstance(packet, Subscribe):
            self._subscribe(packet)
        elif isinstance(packet, Unsubscribe):
            codes = []
            for topic_filter in packet.filters:
                found = session.subscriptions.pop(topic_filter, None)
                self.broker.unshare(session.client_id, topic_filter)
                codes.append(0 if found else NO_SUBSCRIPTION)
            self.write(wire.unsuback(packet.packet_id, codes, self.version))
        elif isinstance(packet, Ping):
            self.write(wire.PINGRESP_PACKET)
        elif isinstance(packet, Disconnect):
            expiry = wire.property_value(packet.properties, wire.SESSION_EXPIRY)
            if isinstance(expiry, int):
                session.expiry = min(float(expiry), self.broker.limits.max_session_expiry)
            if packet.reason != 0x04:  # "disconnect with will message"
                self.will = None
            self.close(None)
            return False
        else:  # a second CONNECT
            raise wire.MalformedError("CONNECT sent twice", 0x82)
        return True

    def _publish(self, packet: Publish) -> None:
        assert self.session is not None
        broker = self.broker
        if wire.property_value(packet.properties, wire.TOPIC_ALIAS) is not None:
            raise wire.MalformedError("topic aliases are not accepted", 0x94)
        if not is_valid_topic(packet.topic, wildcards=False):
            raise wire.MalformedError(f"invalid topic {packet.topic[:80]!r}", 0x90)
        allowed = broker.authorizer.may(self.session.identity, "publish", packet.topic)
        reason = 0 if allowed else NOT_AUTHORIZED
        if not allowed:
            metrics.inc("embedded_broker_refused", "publish_denied")
        if packet.qos == 2:
            fresh = packet.packet_id not in self.session.incoming
            # An MQTT 5 refusal ends the exchange (no PUBREL follows): the id is not kept.
            if allowed or self.version != 5:
                self.session.incoming.add(packet.packet_id)
            self.write(wire.ack(wire.PUBREC, packet.packet_id, self.version, reason))
            if not (fresh and allowed):
                return
        elif packet.qos == 1:
            self.write(wire.ack(wire.PUBACK, packet.packet_id, self.version, reason))
        if allowed:
            properties = [(k, v) for k, v in packet.properties if k in wire.FORWARDED]
            broker.publish(
                Message(
                    packet.topic,
                    packet.payload,
                    packet.qos,
                    packet.retain,
                    properties,
                    self.session.client_id,
                )
            )

    def _ack(self, packet: Ack) -> None:
        session = self.session
        assert session is not None
        if packet.kind == wire.PUBREL:
            session.incoming.discard(packet.packet_id)
            self.write(wire.ack(wire.PUBCOMP, packet.packet_id, self.version))
            return
        sent = session.inflight.get(packet.packet_id)
        if sent is None:
            return
        if packet.kind == wire.PUBREC and packet.reason < 0x80:
            session.inflight[packet.packet_id] = (sent[0], True)
            self.write(wire.ack(wire.PUBREL, packet.packet_id, self.version))
            return
        del session.inflight[packet.packet_id]
        self.pump()

    def _subscribe(self, packet: Subscribe) -> None:
        session = self.session
        assert session is not None
        broker, codes, fresh = self.broker, [], []
        identifier = wire.property_value(packet.properties, wire.SUBSCRIPTION_ID)
        for sub in packet.subscriptions:
            sub.identifier = identifier if isinstance(identifier, int) else None
            shared = split_shared(sub.topic_filter) is not None
            if not valid_filter(sub.topic_filter) or (shared and sub.no_local):
                codes.append(TOPIC_FILTER_INVALID if self.version == 5 else 0x80)
                continue
            if not broker.authorizer.may(session.identity, "subscribe", sub.topic_filter):
                metrics.inc("embedded_broker_refused", "subscribe_denied")
                codes.append(NOT_AUTHORIZED if self.version == 5 else 0x80)
                continue
            new = sub.topic_filter not in session.subscriptions
            session.subscriptions[sub.topic_filter] = sub
            broker.share(session.client_id, sub.topic_filter)
            codes.append(sub.qos)
            if not shared and (sub.retain_handling == 0 or (sub.retain_handling == 1 and new)):
                fresh.append(sub)
        self.write(wire.suback(packet.packet_id, codes, self.version))
        for sub in fresh:
            broker.send_retained(session, sub)

    def close(
        self, reason: int | None = 0x80, *, send_will: bool = True, abort: bool = False
    ) -> None:
        """End the connection (with a DISCONNECT ``reason`` to MQTT 5 clients, if given).

        ``abort`` drops what waits to be sent (a client that does not read would otherwise
        hold the connection, its buffer and its session forever).
        """
        if self.closed:
            return
        if not send_will:
            self.will = None
        if reason is not None and self.version == 5 and self.session is not None and not abort:
            self.writer.write(wire.disconnect(reason))
        self.closed = True
        if abort:
            self.writer.transport.abort()
        else:
            self.writer.close()

    def ended(self) -> None:
        """The connection is gone: publish its will, let its session wait or go."""
        self.closed = True
        session, self.session = self.session, None
        if session is None or session.connection is not self:
            return
        will, self.will = self.will, None
        if will is not None:
            forwarded = [(k, v) for k, v in will.properties if k in wire.FORWARDED]
            message = Message(will.topic, will.payload, will.qos, will.retain, forwarded, None)
            publish = self._will_publisher(session, message)
            delay = min(self.will_delay, session.expiry)
            if delay > 0:
                session.will_timer = asyncio.get_running_loop().call_later(delay, publish)
            else:
                publish()
        self.broker.detach(session)

    def _will_publisher(self, session: Session, message: Message) -> Callable[[], None]:
        broker = self.broker

        def publish() -> None:
            session.will_timer = None
            # Asked again: the client may have lost the right since it connected.
            if broker.authorizer.may(session.identity, "publish", message.topic):
                broker.publish(message)

        return publish
