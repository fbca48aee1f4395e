"""MQTT 3.1.1 and 5 packets, both ways (pure, no I/O).

The embedded broker reads what clients send (`parse`: CONNECT, PUBLISH, the acknowledgements,
SUBSCRIBE, UNSUBSCRIBE, PINGREQ, DISCONNECT, AUTH) and writes what brokers send; the bridge's
client (`bridges.client`) writes what clients send and reads what brokers send
(`parse_from_server`). `Framer` cuts a byte stream into packets. A packet that breaks the
protocol raises `MalformedError`, and the connection is closed.
"""

import struct
from collections.abc import Iterable
from dataclasses import dataclass, field

CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT, AUTH = range(8, 16)
MAX_REMAINING_LENGTH = 268_435_455

# MQTT 5 property identifiers and how their values are encoded.
PAYLOAD_FORMAT, MESSAGE_EXPIRY, CONTENT_TYPE, RESPONSE_TOPIC, CORRELATION_DATA = 1, 2, 3, 8, 9
SUBSCRIPTION_ID, SESSION_EXPIRY, ASSIGNED_CLIENT_ID, SERVER_KEEP_ALIVE = 0x0B, 0x11, 0x12, 0x13
AUTH_METHOD, AUTH_DATA, WILL_DELAY, REASON_STRING, RECEIVE_MAXIMUM = 0x15, 0x16, 0x18, 0x1F, 0x21
TOPIC_ALIAS_MAXIMUM, TOPIC_ALIAS, MAXIMUM_QOS, RETAIN_AVAILABLE, USER_PROPERTY = (
    0x22,
    0x23,
    0x24,
    0x25,
    0x26,
)
MAXIMUM_PACKET_SIZE, WILDCARD_AVAILABLE, SUBSCRIPTION_IDS_AVAILABLE, SHARED_AVAILABLE = (
    0x27,
    0x28,
    0x29,
    0x2A,
)
_BYTE, _U16, _U32, _VARINT, _UTF8, _BINARY, _PAIR = range(7)
_PROPERTY_TYPES = {
    PAYLOAD_FORMAT: _BYTE,
    MESSAGE_EXPIRY: _U32,
    CONTENT_TYPE: _UTF8,
    RESPONSE_TOPIC: _UTF8,
    CORRELATION_DATA: _BINARY,
    SUBSCRIPTION_ID: _VARINT,
    SESSION_EXPIRY: _U32,
    ASSIGNED_CLIENT_ID: _UTF8,
    SERVER_KEEP_ALIVE: _U16,
    AUTH_METHOD: _UTF8,
    AUTH_DATA: _BINARY,
    0x17: _BYTE,  # request problem information
    WILL_DELAY: _U32,
    0x19: _BYTE,  # request response information
    0x1A: _UTF8,  # response information
    0x1C: _UTF8,  # server reference
    REASON_STRING: _UTF8,
    RECEIVE_MAXIMUM: _U16,
    TOPIC_ALIAS_MAXIMUM: _U16,
    TOPIC_ALIAS: _U16,
    MAXIMUM_QOS: _BYTE,
    RETAIN_AVAILABLE: _BYTE,
    USER_PROPERTY: _PAIR,
    MAXIMUM_PACKET_SIZE: _U32,
    WILDCARD_AVAILABLE: _BYTE,
    SUBSCRIPTION_IDS_AVAILABLE: _BYTE,
    SHARED_AVAILABLE: _BYTE,
}
# What travels with a message from its publisher to its subscribers.
FORWARDED = frozenset(
    {PAYLOAD_FORMAT, MESSAGE_EXPIRY, CONTENT_TYPE, RESPONSE_TOPIC, CORRELATION_DATA, USER_PROPERTY}
)

PropertyValue = int | str | bytes | tuple[str, str]
Properties = list[tuple[int, PropertyValue]]


class MalformedError(Exception):
    """A packet that breaks the protocol; ``reason`` is the MQTT 5 reason code to answer."""

    def __init__(self, detail: str, reason: int = 0x81) -> None:
        super().__init__(detail)
        self.reason = reason


@dataclass(slots=True)
class Will:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    properties: Properties = field(default_factory=list)


@dataclass(slots=True)
class Connect:
    version: int  # 4 (3.1.1) or 5
    client_id: str
    clean_start: bool
    keepalive: int
    username: str | None
    password: bytes | None
    will: Will | None
    properties: Properties


@dataclass(slots=True)
class Publish:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    dup: bool = False
    packet_id: int = 0
    properties: Properties = field(default_factory=list)


@dataclass(slots=True)
class Subscription:
    topic_filter: str
    qos: int
    no_local: bool = False
    retain_as_published: bool = False
    retain_handling: int = 0
    identifier: int | None = None  # MQTT 5 subscription identifier


@dataclass(slots=True)
class Subscribe:
    packet_id: int
    subscriptions: list[Subscription]
    properties: Properties


@dataclass(slots=True)
class Unsubscribe:
    packet_id: int
    filters: list[str]


@dataclass(slots=True)
class Ack:
    """PUBACK, PUBREC, PUBREL or PUBCOMP."""

    kind: int
    packet_id: int
    reason: int = 0


@dataclass(slots=True)
class Disconnect:
    reason: int = 0
    properties: Properties = field(default_factory=list)


@dataclass(slots=True)
class Ping:
    pass


@dataclass(slots=True)
class Connack:
    session_present: bool
    reason: int  # 0: accepted (MQTT 3.1.1's return codes are under 0x80 too, but not 0)
    properties: Properties = field(default_factory=list)


@dataclass(slots=True)
class Granted:
    """SUBACK or UNSUBACK: a code per filter (MQTT 3.1.1's UNSUBACK has none)."""

    kind: int
    packet_id: int
    codes: list[int]


Packet = Connect | Publish | Subscribe | Unsubscribe | Ack | Disconnect | Ping
ServerPacket = Connack | Publish | Ack | Granted | Ping | Disconnect


class TopicError(MalformedError):
    """A PUBLISH whose topic is not a valid UTF-8 string; the rest of it was read."""

    def __init__(self, detail: str, qos: int, packet_id: int) -> None:
        super().__init__(detail)
        self.qos, self.packet_id = qos, packet_id


def property_value(properties: Properties, ident: int) -> PropertyValue | None:
    """The first value of property ``ident``, if any."""
    return next((value for key, value in properties if key == ident), None)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def take(self, n: int) -> bytes:
        if self.at + n > len(self.data):
            raise MalformedError("packet ends too soon")
        chunk = self.data[self.at : self.at + n]
        self.at += n
        return chunk

    def left(self) -> int:
        return len(self.data) - self.at

    def byte(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int(struct.unpack(">H", self.take(2))[0])

    def u32(self) -> int:
        return int(struct.unpack(">I", self.take(4))[0])

    def varint(self) -> int:
        value, shift = 0, 0
        for _ in range(4):
            digit = self.byte()
            value |= (digit & 0x7F) << shift
            if not digit & 0x80:
                return value
            shift += 7
        raise MalformedError("variable byte integer longer than 4 bytes")

    def binary(self) -> bytes:
        return self.take(self.u16())

    def utf8(self) -> str:
        return _text(self.binary())

    def properties(self) -> Properties:
        end = self.varint() + self.at
        if end > len(self.data):
            raise MalformedError("properties run past the packet")
        found: Properties = []
        while self.at < end:
            ident = self.varint()
            kind = _PROPERTY_TYPES.get(ident)
            if kind is None:
                raise MalformedError(f"unknown property 0x{ident:02x}")
            found.append((ident, self._value(kind)))
        if self.at != end:
            raise MalformedError("properties run past their length")
        return found

    def _value(self, kind: int) -> PropertyValue:  # noqa: PLR0911 - one return per type
        if kind == _BYTE:
            return self.byte()
        if kind == _U16:
            return self.u16()
        if kind == _U32:
            return self.u32()
        if kind == _VARINT:
            return self.varint()
        if kind == _UTF8:
            return self.utf8()
        if kind == _BINARY:
            return self.binary()
        return (self.utf8(), self.utf8())


def _text(raw: bytes) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedError("a string is not UTF-8") from exc
    if "\x00" in text:
        raise MalformedError("a string contains NUL")
    return text


def remaining_length(header: bytes) -> int | None:
    """The remaining length a fixed header announces (None: more bytes needed)."""
    value, shift = 0, 0
    for index, digit in enumerate(header[1:5]):
        value |= (digit & 0x7F) << shift
        if not digit & 0x80:
            return value
        shift += 7
        if index == 3:
            raise MalformedError("remaining length longer than 4 bytes")
    return None


def parse(first: int, body: bytes, version: int) -> Packet:  # noqa: PLR0911, PLR0912
    """One packet from its first byte and its body; ``version`` is the connection's (0: none)."""
    kind, flags = first >> 4, first & 0x0F
    reader = _Reader(body)
    if kind == CONNECT:
        return _connect(reader)
    if version == 0:
        raise MalformedError("the first packet must be CONNECT", 0x82)
    if kind == PUBLISH:
        return _publish(reader, flags, version)
    if kind in (PUBACK, PUBREC, PUBREL, PUBCOMP):
        return _ack(reader, kind, flags, version)
    if kind == SUBSCRIBE:
        return _subscribe(reader, flags, version)
    if kind == UNSUBSCRIBE:
        if flags != 2:
            raise MalformedError("reserved flags set")
        packet_id = reader.u16()
        if version == 5:
            reader.properties()
        filters = []
        while reader.left():
            filters.append(reader.utf8())
        if not filters:
            raise MalformedError("UNSUBSCRIBE without a filter", 0x82)
        return Unsubscribe(packet_id, filters)
    if kind == PINGREQ:
        return Ping()
    if kind == DISCONNECT:
        return _disconnect(reader, version)
    if kind == AUTH:
        raise MalformedError("extended authentication is not supported", 0x8C)
    raise MalformedError(f"a client may not send packet type {kind}", 0x82)


def _connect(reader: _Reader) -> Connect:
    name = reader.utf8()
    version = reader.byte()
    if (name, version) not in (("MQTT", 4), ("MQTT", 5)):
        raise MalformedError(f"protocol {name!r} version {version} is not supported", 0x84)
    flags = reader.byte()
    if flags & 0x01:
        raise MalformedError("reserved connect flag set")
    keepalive = reader.u16()
    properties = reader.properties() if version == 5 else []
    client_id = reader.utf8()
    will = None
    if flags & 0x04:
        will_properties = reader.properties() if version == 5 else []
        will_topic = reader.utf8()
        will_qos = (flags >> 3) & 0x03
        if will_qos == 3:
            raise MalformedError("will QoS 3")
        will = Will(will_topic, reader.binary(), will_qos, bool(flags & 0x20), will_properties)
    elif flags & 0x38:
        raise MalformedError("will flags without a will")
    username = reader.utf8() if flags & 0x80 else None
    password = reader.binary() if flags & 0x40 else None
    return Connect(
        version, client_id, bool(flags & 0x02), keepalive, username, password, will, properties
    )


def parse_publish(first: int, body: bytes, version: int) -> Publish:
    """A PUBLISH from its first byte and its body: what `parse` gives, read faster.

    The bridge's hot path. The common shape (a short properties section, or one holding just a
    subscription identifier under 128) is read inline; any other goes through the reader.
    """
    qos = (first >> 1) & 0x03
    try:
        pos = 2 + (body[0] << 8 | body[1])
        if qos == 3 or pos > len(body):
            raise MalformedError("QoS 3" if qos == 3 else "packet ends too soon")
        raw_topic = body[2:pos]
        packet_id = 0
        if qos:
            packet_id = body[pos] << 8 | body[pos + 1]
            pos += 2
            if not packet_id:
                raise MalformedError("packet id 0")
        properties: Properties = []
        if version == 5:
            size = body[pos]
            if size == 2 and body[pos + 1] == SUBSCRIPTION_ID and body[pos + 2] < 0x80:
                properties = [(SUBSCRIPTION_ID, body[pos + 2])]
                pos += 3
            elif size:
                reader = _Reader(body)
                reader.at = pos
                properties = reader.properties()
                pos = reader.at
            else:
                pos += 1
    except IndexError as exc:
        raise MalformedError("packet ends too soon") from exc
    try:
        topic = _text(raw_topic)
    except MalformedError as exc:
        raise TopicError(str(exc), qos, packet_id) from exc
    return Publish(topic, body[pos:], qos, bool(first & 1), bool(first & 8), packet_id, properties)


def _publish(reader: _Reader, flags: int, version: int) -> Publish:
    qos = (flags >> 1) & 0x03
    if qos == 3:
        raise MalformedError("QoS 3")
    raw_topic = reader.binary()
    packet_id = reader.u16() if qos else 0
    if qos and not packet_id:
        raise MalformedError("packet id 0")
    try:
        topic = _text(raw_topic)
    except MalformedError as exc:
        raise TopicError(str(exc), qos, packet_id) from exc
    properties = reader.properties() if version == 5 else []
    payload = reader.take(reader.left())
    return Publish(topic, payload, qos, bool(flags & 1), bool(flags & 8), packet_id, properties)


def parse_from_server(first: int, body: bytes, version: int) -> ServerPacket:
    """One packet a broker sent, from its first byte and its body, on a ``version`` connection."""
    kind, flags = first >> 4, first & 0x0F
    reader = _Reader(body)
    if kind == PUBLISH:
        return _publish(reader, flags, version)
    if kind in (PUBACK, PUBREC, PUBREL, PUBCOMP):
        return _ack(reader, kind, flags, version)
    if kind == CONNACK:
        session_present, reason = reader.byte() & 0x01, reader.byte()
        properties = reader.properties() if version == 5 and reader.left() else []
        return Connack(bool(session_present), reason, properties)
    if kind in (SUBACK, UNSUBACK):
        packet_id = reader.u16()
        if version == 5:
            reader.properties()
        return Granted(kind, packet_id, list(reader.take(reader.left())))
    if kind == PINGRESP:
        return Ping()
    if kind == DISCONNECT:
        return _disconnect(reader, version)
    raise MalformedError(f"a server may not send packet type {kind}", 0x82)


def _ack(reader: _Reader, kind: int, flags: int, version: int) -> Ack:
    """PUBACK, PUBREC, PUBREL or PUBCOMP (the same both ways)."""
    if flags != (2 if kind == PUBREL else 0):
        raise MalformedError("reserved flags set")
    packet_id = reader.u16()
    return Ack(kind, packet_id, reader.byte() if version == 5 and reader.left() else 0)


def _disconnect(reader: _Reader, version: int) -> Disconnect:
    """DISCONNECT (the same both ways; MQTT 3.1.1's is empty)."""
    if version == 5 and reader.left():
        reason = reader.byte()
        return Disconnect(reason, reader.properties() if reader.left() else [])
    return Disconnect()


def _subscribe(reader: _Reader, flags: int, version: int) -> Subscribe:
    if flags != 2:
        raise MalformedError("reserved flags set")
    packet_id = reader.u16()
    properties = reader.properties() if version == 5 else []
    subscriptions = []
    while reader.left():
        topic_filter = reader.utf8()
        options = reader.byte()
        if options & 0x03 == 3 or options & 0xC0 or (version == 4 and options & 0xFC):
            raise MalformedError("bad subscription options")
        subscriptions.append(
            Subscription(
                topic_filter,
                options & 0x03,
                no_local=bool(options & 0x04),
                retain_as_published=bool(options & 0x08),
                retain_handling=(options >> 4) & 0x03,
            )
        )
    if not subscriptions:
        raise MalformedError("SUBSCRIBE without a filter", 0x82)
    return Subscribe(packet_id, subscriptions, properties)


# Writing.


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        digit, value = value & 0x7F, value >> 7
        out.append(digit | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _binary(raw: bytes) -> bytes:
    return struct.pack(">H", len(raw)) + raw


def _string(text: str) -> bytes:
    return _binary(text.encode("utf-8"))


def encode_properties(properties: Iterable[tuple[int, PropertyValue]]) -> bytes:
    body = bytearray()
    for ident, value in properties:
        kind = _PROPERTY_TYPES[ident]
        body += _varint(ident)
        if kind == _BYTE:
            body.append(int(value))  # type: ignore[arg-type]
        elif kind == _U16:
            body += struct.pack(">H", value)
        elif kind == _U32:
            body += struct.pack(">I", value)
        elif kind == _VARINT:
            body += _varint(int(value))  # type: ignore[arg-type]
        elif kind == _UTF8:
            body += _string(str(value))
        elif kind == _BINARY:
            assert isinstance(value, bytes)
            body += _binary(value)
        else:
            assert isinstance(value, tuple)
            body += _string(value[0]) + _string(value[1])
    return _varint(len(body)) + bytes(body)


def _packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + _varint(len(body)) + body


def connack(version: int, reason: int, *, session_present: bool, properties: Properties) -> bytes:
    if version == 5:
        body = bytes([int(session_present), reason]) + encode_properties(properties)
    else:
        body = bytes([int(session_present), reason])
    return _packet(CONNACK << 4, body)


def publish(message: Publish, version: int) -> bytes:
    first = PUBLISH << 4 | message.qos << 1 | int(message.retain) | (8 if message.dup else 0)
    body = _string(message.topic)
    if message.qos:
        body += struct.pack(">H", message.packet_id)
    if version == 5:
        body += encode_properties(message.properties)
    return _packet(first, body + message.payload)


def ack(kind: int, packet_id: int, version: int, reason: int = 0) -> bytes:
    """PUBACK, PUBREC, PUBREL or PUBCOMP (the bridge writes one per message it takes: built
    directly, its remaining length being 2 or 3)."""
    first = kind << 4 | (2 if kind == PUBREL else 0)
    if version == 5 and reason:
        return bytes((first, 3)) + packet_id.to_bytes(2, "big") + bytes((reason,))
    return bytes((first, 2)) + packet_id.to_bytes(2, "big")


def suback(packet_id: int, codes: list[int], version: int) -> bytes:
    body = struct.pack(">H", packet_id) + (b"\x00" if version == 5 else b"") + bytes(codes)
    return _packet(SUBACK << 4, body)


def unsuback(packet_id: int, codes: list[int], version: int) -> bytes:
    body = struct.pack(">H", packet_id)
    if version == 5:
        body += b"\x00" + bytes(codes)
    return _packet(UNSUBACK << 4, body)


PINGRESP_PACKET = bytes([PINGRESP << 4, 0])


def disconnect(reason: int) -> bytes:
    """A server's DISCONNECT (MQTT 5 only: 3.1.1 servers just close)."""
    return _packet(DISCONNECT << 4, bytes([reason]))


# What a client writes.


def connect(message: Connect) -> bytes:
    """CONNECT (with MQTT 3.1.1, a password is sent only with a user name)."""
    v5 = message.version == 5
    flags = 0x02 if message.clean_start else 0
    payload = _string(message.client_id)
    will = message.will
    if will is not None:
        flags |= 0x04 | will.qos << 3 | (0x20 if will.retain else 0)
        if v5:
            payload += encode_properties(will.properties)
        payload += _string(will.topic) + _binary(will.payload)
    if message.username is not None:
        flags |= 0x80
        payload += _string(message.username)
    if message.password is not None and (v5 or message.username is not None):
        flags |= 0x40
        payload += _binary(message.password)
    body = _string("MQTT") + bytes([message.version, flags]) + struct.pack(">H", message.keepalive)
    if v5:
        body += encode_properties(message.properties)
    return _packet(CONNECT << 4, body + payload)


def subscribe(message: Subscribe, version: int) -> bytes:
    body = struct.pack(">H", message.packet_id)
    if version == 5:
        body += encode_properties(message.properties)
    for sub in message.subscriptions:
        options = sub.qos
        if version == 5:
            options |= int(sub.no_local) << 2 | int(sub.retain_as_published) << 3
            options |= sub.retain_handling << 4
        body += _string(sub.topic_filter) + bytes([options])
    return _packet(SUBSCRIBE << 4 | 2, body)


def unsubscribe(message: Unsubscribe, version: int) -> bytes:
    body = struct.pack(">H", message.packet_id)
    if version == 5:
        body += encode_properties([])
    return _packet(UNSUBSCRIBE << 4 | 2, body + b"".join(_string(f) for f in message.filters))


PINGREQ_PACKET = bytes([PINGREQ << 4, 0])
# A client's DISCONNECT: normal, so the broker drops the will (MQTT 5 reason 0 goes unsaid).
CLIENT_DISCONNECT_PACKET = bytes([DISCONNECT << 4, 0])
DUP_FLAG = 0x08  # in a PUBLISH's first byte: sent before


@dataclass(slots=True)
class Oversized:
    """The start of a packet over the framer's limit; the rest is skipped as it arrives."""

    first: int
    head: bytes  # the first `Framer.HEAD` bytes of the body at most
    length: int


def oversized_publish(packet: Oversized) -> tuple[int, int]:
    """The QoS and packet id of an oversized PUBLISH, read from its head."""
    reader = _Reader(packet.head)
    qos = (packet.first >> 1) & 0x03
    reader.binary()  # the topic
    return qos, reader.u16() if qos else 0


class Framer:
    """Cuts the bytes a connection receives into packets, ``(first byte, body)``.

    A packet over ``limit`` bytes is never held whole: its first `HEAD` bytes come out as an
    `Oversized` (a PUBLISH's topic and packet id fit in them), and the rest is skipped.
    """

    HEAD = 2 + 65_535 + 2  # a topic of the longest kind and a packet id

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._buffer = bytearray()
        self._at = 0
        self._skip = 0

    def feed(self, data: bytes) -> None:
        if self._skip:
            skipped = min(self._skip, len(data))
            self._skip -= skipped
            data = data[skipped:]
        if self._at and self._at == len(self._buffer):
            self._buffer.clear()
            self._at = 0
        self._buffer += data

    def pending(self) -> int:
        """Bytes received and not yet cut into packets."""
        return len(self._buffer) - self._at

    def next(self) -> "tuple[int, bytes] | Oversized | None":
        """The next whole packet, or None until more bytes come."""
        buffer, at = self._buffer, self._at
        end = len(buffer)
        if end - at < 2:
            return None
        length, shift, pos = 0, 0, at + 1
        while True:
            if pos >= end:
                return None
            digit = buffer[pos]
            length |= (digit & 0x7F) << shift
            pos += 1
            if not digit & 0x80:
                break
            shift += 7
            if shift > 21:
                raise MalformedError("remaining length longer than 4 bytes")
        first = buffer[at]
        if length > self.limit:
            head = min(length, self.HEAD)
            if end - pos < head:
                return None
            oversized = Oversized(first, bytes(buffer[pos : pos + head]), length)
            rest = length - head
            taken = min(rest, end - pos - head)
            self._skip = rest - taken
            self._at = pos + head + taken
            self._compact()
            return oversized
        if end - pos < length:
            self._compact()
            return None
        self._at = pos + length
        return first, bytes(buffer[pos : self._at])

    def _compact(self) -> None:
        if self._at:
            del self._buffer[: self._at]
            self._at = 0


# MQTT 5 reason codes (3.1.1's CONNACK return codes 1-5 are mapped to theirs), for log lines.
REASON_NAMES = {
    0x00: "success",
    0x10: "no matching subscribers",
    0x80: "unspecified error",
    0x81: "malformed packet",
    0x82: "protocol error",
    0x83: "implementation specific error",
    0x84: "unsupported protocol version",
    0x85: "client identifier not valid",
    0x86: "bad user name or password",
    0x87: "not authorized",
    0x88: "server unavailable",
    0x89: "server busy",
    0x8A: "banned",
    0x8B: "server shutting down",
    0x8C: "bad authentication method",
    0x8D: "keep alive timeout",
    0x8E: "session taken over",
    0x8F: "topic filter invalid",
    0x90: "topic name invalid",
    0x91: "packet identifier in use",
    0x92: "packet identifier not found",
    0x93: "receive maximum exceeded",
    0x94: "topic alias invalid",
    0x95: "packet too large",
    0x97: "quota exceeded",
    0x99: "payload format invalid",
    0x9A: "retain not supported",
    0x9B: "QoS not supported",
    0x9C: "use another server",
    0x9D: "server moved",
    0x9E: "shared subscriptions not supported",
    0x9F: "connection rate exceeded",
    0xA1: "subscription identifiers not supported",
    0xA2: "wildcard subscriptions not supported",
}
_V3_CONNACK = {1: 0x84, 2: 0x85, 3: 0x88, 4: 0x86, 5: 0x87}


def reason_name(code: int, *, v3_connack: bool = False) -> str:
    """What a reason code means (``v3_connack``: an MQTT 3.1.1 CONNACK return code)."""
    if v3_connack:
        code = _V3_CONNACK.get(code, code)
    return REASON_NAMES.get(code, f"reason 0x{code:02x}")
