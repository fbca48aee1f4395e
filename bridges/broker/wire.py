"""MQTT 3.1.1 and 5 packets as the embedded broker reads and writes them (pure, no I/O).

Only what a broker needs: it reads what clients send (CONNECT, PUBLISH, the acknowledgements,
SUBSCRIBE, UNSUBSCRIBE, PINGREQ, DISCONNECT, AUTH) and writes what brokers send. A packet that
breaks the protocol raises `MalformedError`, and the connection is closed.
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


Packet = Connect | Publish | Subscribe | Unsubscribe | Ack | Disconnect | Ping


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
        raw = self.binary()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MalformedError("a string is not UTF-8") from exc
        if "\x00" in text:
            raise MalformedError("a string contains NUL")
        return text

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
        if flags != (2 if kind == PUBREL else 0):
            raise MalformedError("reserved flags set")
        packet_id = reader.u16()
        reason = reader.byte() if version == 5 and reader.left() else 0
        return Ack(kind, packet_id, reason)
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
        if version == 5 and reader.left():
            reason = reader.byte()
            return Disconnect(reason, reader.properties() if reader.left() else [])
        return Disconnect()
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


def _publish(reader: _Reader, flags: int, version: int) -> Publish:
    qos = (flags >> 1) & 0x03
    if qos == 3:
        raise MalformedError("QoS 3")
    topic = reader.utf8()
    packet_id = reader.u16() if qos else 0
    if qos and not packet_id:
        raise MalformedError("packet id 0")
    properties = reader.properties() if version == 5 else []
    payload = reader.take(reader.left())
    return Publish(topic, payload, qos, bool(flags & 1), bool(flags & 8), packet_id, properties)


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


def _string(text: str) -> bytes:
    raw = text.encode("utf-8")
    return struct.pack(">H", len(raw)) + raw


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
            body += struct.pack(">H", len(value)) + value
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
    body = struct.pack(">H", packet_id)
    if version == 5 and reason:
        body += bytes([reason])
    return _packet(kind << 4 | (2 if kind == PUBREL else 0), body)


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
