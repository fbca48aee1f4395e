"""The bridge's PUBLISH reader agrees with paho's decoder, or leaves the packet to it."""

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt import _packet
from paho.mqtt.client import MQTTv5
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bridges.client import _Client
from bridges.packets import Publish, read_publish


def paho_reads(header: int, body: bytes, *, v5: bool) -> Publish | None:
    """What paho makes of the packet, in the reader's terms; None where paho refuses it."""
    protocol = MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311
    try:
        packet = _packet.decode_publish(header, body, protocol)
        topic = packet.topic.decode()
    except Exception:
        return None
    props = packet.properties
    return Publish(
        topic=topic,
        payload=bytes(packet.payload),
        qos=packet.qos,
        mid=packet.mid,
        retain=packet.retain,
        dup=packet.dup,
        subscription_ids=tuple(getattr(props, "SubscriptionIdentifier", None) or ()),
        user_properties=tuple(getattr(props, "UserProperty", None) or ()),
        content_type=getattr(props, "ContentType", None),
    )


def encode(
    topic: str,
    payload: bytes,
    *,
    qos: int = 0,
    mid: int = 0,
    retain: bool = False,
    dup: bool = False,
    properties: Properties | None = None,
) -> tuple[int, bytes]:
    header = 0x30 | (0x08 if dup else 0) | (qos << 1) | (0x01 if retain else 0)
    raw_topic = topic.encode()
    body = struct.pack("!H", len(raw_topic)) + raw_topic
    if qos:
        body += struct.pack("!H", mid)
    if properties is not None:
        body += properties.pack()  # type: ignore[no-untyped-call]
    return header, body + payload


def publish_properties(**values: object) -> Properties:
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    for name, value in values.items():
        setattr(props, name, value)
    return props


def test_a_device_message_reads_as_paho_reads_it() -> None:
    props = publish_properties(
        SubscriptionIdentifier=[1, 300],
        UserProperty=[("gateway", "gw-1"), ("k", "é")],
        ContentType="application/json",
        MessageExpiryInterval=60,
        PayloadFormatIndicator=1,
        ResponseTopic="replies/x",
        CorrelationData=b"\x00\x01",
    )
    header, body = encode(
        "rooms/lab/t", b'{"t": 21.5}', qos=1, mid=513, retain=True, properties=props
    )
    read = read_publish(header, body, v5=True)
    assert read is not None
    assert read == paho_reads(header, body, v5=True)
    assert read.topic == "rooms/lab/t"
    assert read.payload == b'{"t": 21.5}'
    assert (read.qos, read.mid, read.retain, read.dup) == (1, 513, True, False)
    assert read.subscription_ids == (1, 300)
    assert read.user_properties == (("gateway", "gw-1"), ("k", "é"))
    assert read.content_type == "application/json"


def test_mqtt_3_packets_carry_no_properties() -> None:
    header, body = encode("rooms/a/b", b"\xff\x00raw", qos=0, dup=True)
    read = read_publish(header, body, v5=False)
    assert read == paho_reads(header, body, v5=False)
    assert read is not None
    assert read.dup
    assert read.payload == b"\xff\x00raw"


@pytest.mark.parametrize(
    ("why", "header", "body"),
    [
        ("QoS 2 has its own handshake", *encode("a/b", b"x", qos=2, mid=1)),
        ("a topic alias", *encode("", b"x", properties=publish_properties(TopicAlias=3))),
        ("an empty topic", *encode("", b"x", properties=publish_properties())),
        ("a topic longer than the packet", 0x30, b"\x00\x09a/b"),
        ("a property PUBLISH cannot carry", 0x30, b"\x00\x01a\x02\x11\x00x"),
        ("a repeated content type", 0x30, b"\x00\x01a\x08\x03\x00\x01x\x03\x00\x01yp"),
        ("a length not in its shortest form", 0x30, b"\x00\x01a\x80\x00p"),
        ("properties longer than the packet", 0x30, b"\x00\x01a\x09\x03\x00\x01x"),
        ("a NUL in a string property", 0x30, b"\x00\x01a\x04\x03\x00\x01\x00p"),
        ("a topic that is not UTF-8", 0x30, b"\x00\x02\xc3\x28\x00p"),
    ],
)
def test_anything_unusual_is_left_to_paho(why: str, header: int, body: bytes) -> None:
    assert read_publish(header, body, v5=True) is None, why


@settings(max_examples=500, deadline=None)
@given(
    header=st.integers(0x30, 0x3F),
    body=st.binary(max_size=64),
    v5=st.booleans(),
)
def test_arbitrary_bytes_are_read_as_paho_reads_them_or_left_to_it(
    header: int, body: bytes, v5: bool
) -> None:
    read = read_publish(header, body, v5=v5)
    if read is not None:
        assert read == paho_reads(header, body, v5=v5)


@settings(max_examples=300, deadline=None)
@given(
    topic=st.text(min_size=1, max_size=20).filter(lambda t: "\x00" not in t and "\ufeff" not in t),
    payload=st.binary(max_size=50),
    qos=st.integers(0, 1),
    mid=st.integers(1, 65535),
    ids=st.lists(st.integers(1, 268_435_455), max_size=3),
    users=st.lists(st.tuples(st.text(max_size=5), st.text(max_size=5)), max_size=3),
)
def test_well_formed_packets_are_all_read(
    topic: str, payload: bytes, qos: int, mid: int, ids: list[int], users: list[tuple[str, str]]
) -> None:
    values: dict[str, object] = {}
    if ids:
        values["SubscriptionIdentifier"] = ids
    if users:
        values["UserProperty"] = users
    header, body = encode(topic, payload, qos=qos, mid=mid, properties=publish_properties(**values))
    # Where paho refuses one (a user property with a NUL), the reader leaves it to paho too.
    assert read_publish(header, body, v5=True) == paho_reads(header, body, v5=True)


def test_the_bridge_client_hands_a_read_packet_straight_on() -> None:
    received: list[Publish] = []
    client = _Client(received.append, CallbackAPIVersion.VERSION2, protocol=MQTTv5, manual_ack=True)
    header, body = encode("rooms/a/b", b"{}", qos=1, mid=9, properties=publish_properties())
    client._in_packet["command"] = header
    client._in_packet["packet"] = body
    assert client._handle_publish() == MQTTErrorCode.MQTT_ERR_SUCCESS
    assert received == [
        Publish(topic="rooms/a/b", payload=b"{}", qos=1, mid=9, retain=False, dup=False)
    ]
