"""A lean reader for the PUBLISH packets the bridge receives.

paho-mqtt decodes every PUBLISH into an ``MQTTMessage`` with an ``MQTTMessageInfo`` (and its
``threading.Condition``) and, with MQTT 5, a ``Properties`` object that rebuilds its tables of
names and types for each packet. Under a device flood that was most of the bridge's network
thread. `read_publish` takes out what the bridge uses, in one pass over the bytes.

It reads the common case only. Anything else (QoS 2 with its four-way handshake, a topic alias,
a property a broker does not send on PUBLISH, a repeated property, anything malformed) gives
``None``, and the packet goes through paho's own decoder, which answers as it always has.
"""

import struct
from dataclasses import dataclass

_U16 = struct.Struct("!H")
# MQTT 5 PUBLISH properties read here (2.2.2.2): identifier -> how its value is laid out.
_BYTE, _FOUR, _VARINT, _BINARY, _STRING, _PAIR = range(6)
_LAYOUT = {
    1: _BYTE,  # payload format indicator
    2: _FOUR,  # message expiry interval
    3: _STRING,  # content type
    8: _STRING,  # response topic
    9: _BINARY,  # correlation data
    11: _VARINT,  # subscription identifier (repeatable)
    38: _PAIR,  # user property (repeatable)
}
_REPEATABLE = frozenset({11, 38})
_CONTENT_TYPE = 3


@dataclass(slots=True)  # not frozen: a frozen one takes 3x as long to make
class Publish:
    """What the bridge needs of a PUBLISH packet."""

    topic: str
    payload: bytes
    qos: int
    mid: int
    retain: bool
    dup: bool
    subscription_ids: tuple[int, ...] = ()
    user_properties: tuple[tuple[str, str], ...] = ()
    content_type: str | None = None


class _Unread(Exception):
    """The packet is left to paho's decoder."""


def read_publish(header: int, body: bytes | bytearray, *, v5: bool) -> Publish | None:
    """Read a PUBLISH from its fixed header's first byte and what follows the remaining length.

    Returns ``None`` where paho's own decoder should have the packet (see the module's doc).
    """
    qos = (header >> 1) & 0x03
    if qos > 1:
        return None
    try:
        return _read(header, qos, memoryview(body), v5=v5)
    except (_Unread, struct.error, IndexError, UnicodeDecodeError):
        return None


def _read(header: int, qos: int, body: memoryview, *, v5: bool) -> Publish:
    topic, pos = _string(body, 0, len(body))
    if not topic:
        raise _Unread  # MQTT 3.1.1 forbids it; with MQTT 5 it takes a topic alias
    mid = 0
    if qos:
        (mid,) = _U16.unpack_from(body, pos)
        pos += 2
    properties = _Properties()
    if v5:
        pos = properties.read(body, pos)
    return Publish(
        topic=topic,
        payload=bytes(body[pos:]),
        qos=qos,
        mid=mid,
        retain=bool(header & 0x01),
        dup=bool(header & 0x08),
        subscription_ids=tuple(properties.subscription_ids),
        user_properties=tuple(properties.user_properties),
        content_type=properties.content_type,
    )


class _Properties:
    """The MQTT 5 properties of one PUBLISH, as far as the bridge uses them."""

    def __init__(self) -> None:
        self.subscription_ids: list[int] = []
        self.user_properties: list[tuple[str, str]] = []
        self.content_type: str | None = None

    def read(self, body: memoryview, pos: int) -> int:
        """Read the properties starting at ``pos``; returns where the payload starts."""
        length, pos = _varint(body, pos)
        end = pos + length
        if end > len(body):
            raise _Unread
        seen: set[int] = set()
        while pos < end:
            ident = body[pos]
            layout = _LAYOUT.get(ident)
            if layout is None or (ident in seen and ident not in _REPEATABLE):
                raise _Unread
            seen.add(ident)
            pos = self._value(ident, layout, body, pos + 1, end)
            if pos > end:
                raise _Unread
        return end

    def _value(self, ident: int, layout: int, body: memoryview, pos: int, end: int) -> int:
        if layout == _BYTE:
            return pos + 1
        if layout == _FOUR:
            return pos + 4
        if layout == _VARINT:
            value, pos = _varint(body, pos)
            self.subscription_ids.append(value)
            return pos
        if layout == _BINARY:
            size: int = _U16.unpack_from(body, pos)[0]
            return pos + 2 + size
        text, pos = _string(body, pos, end)
        if layout == _PAIR:
            value_text, pos = _string(body, pos, end)
            self.user_properties.append((text, value_text))
        elif ident == _CONTENT_TYPE:
            self.content_type = text
        return pos


def _string(body: memoryview, pos: int, end: int) -> tuple[str, int]:
    """A length-prefixed UTF-8 string ending by ``end``, and where the next field starts."""
    (size,) = _U16.unpack_from(body, pos)
    start, stop = pos + 2, pos + 2 + size
    if stop > end:
        raise _Unread
    text = str(body[start:stop], "utf-8")  # surrogates are refused by the codec
    if "\x00" in text or "\ufeff" in text:
        raise _Unread  # forbidden in MQTT strings (1.5.4); paho says so
    return text, stop


def _varint(body: memoryview, pos: int) -> tuple[int, int]:
    """A variable byte integer in its shortest form (1.5.5), and where the next field starts."""
    value = shift = 0
    for length in range(1, 5):
        digit = body[pos]
        pos += 1
        value |= (digit & 0x7F) << shift
        if not digit & 0x80:
            if digit == 0 and length > 1:
                raise _Unread  # not the shortest form
            return value, pos
        shift += 7
    raise _Unread
