"""The embedded broker's packets: what it reads never fails but as MalformedError, and what it
writes reads back the same."""

import contextlib
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridges.broker import wire

_text = st.text(
    st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=30
)
_properties = st.lists(
    st.one_of(
        st.tuples(st.just(wire.USER_PROPERTY), st.tuples(_text, _text)),
        st.tuples(st.just(wire.CONTENT_TYPE), _text),
        st.tuples(st.just(wire.CORRELATION_DATA), st.binary(max_size=20)),
        st.tuples(st.just(wire.MESSAGE_EXPIRY), st.integers(0, 2**32 - 1)),
        st.tuples(st.just(wire.PAYLOAD_FORMAT), st.integers(0, 1)),
        st.tuples(st.just(wire.SUBSCRIPTION_ID), st.integers(1, 268_435_455)),
    ),
    max_size=5,
)


def split(packet: bytes) -> tuple[int, bytes]:
    length = wire.remaining_length(packet[:5])
    assert length is not None
    return packet[0], packet[len(packet) - length :]


@given(
    topic=_text.filter(bool),
    payload=st.binary(max_size=200),
    qos=st.integers(0, 2),
    retain=st.booleans(),
    packet_id=st.integers(1, 65535),
    properties=_properties,
    version=st.sampled_from([4, 5]),
)
def test_a_publish_written_reads_back_the_same(
    topic: str,
    payload: bytes,
    qos: int,
    retain: bool,
    packet_id: int,
    properties: wire.Properties,
    version: int,
) -> None:
    sent = wire.Publish(topic, payload, qos, retain, False, packet_id if qos else 0, properties)
    got = wire.parse(*split(wire.publish(sent, version)), version)
    assert isinstance(got, wire.Publish)
    assert (got.topic, got.payload, got.qos, got.retain) == (topic, payload, qos, retain)
    assert got.packet_id == sent.packet_id
    assert got.properties == (properties if version == 5 else [])


@given(first=st.integers(0, 255), body=st.binary(max_size=64), version=st.sampled_from([0, 4, 5]))
def test_any_bytes_parse_or_are_refused_as_malformed(first: int, body: bytes, version: int) -> None:
    with contextlib.suppress(wire.MalformedError):
        wire.parse(first, body, version)


def string(text: str) -> bytes:
    return struct.pack(">H", len(text)) + text.encode()


def test_a_connect_with_credentials_and_a_will() -> None:
    flags = 0x80 | 0x40 | 0x20 | 0x08 | 0x04 | 0x02  # user, password, will retain, will QoS 1
    body = string("MQTT") + bytes([4, flags]) + b"\x00\x3c"
    body += string("dev-1") + string("rooms/a/dev-1/status") + string("offline")
    body += string("dev-1") + string("s3cret")
    packet = wire.parse(wire.CONNECT << 4, body, 0)
    assert isinstance(packet, wire.Connect)
    assert (packet.version, packet.client_id, packet.keepalive) == (4, "dev-1", 60)
    assert (packet.username, packet.password, packet.clean_start) == ("dev-1", b"s3cret", True)
    assert packet.will == wire.Will("rooms/a/dev-1/status", b"offline", 1, True, [])


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (string("MQIsdp") + bytes([3, 2]) + b"\x00\x3c" + string("x"), 0x84),  # MQTT 3.1
        (string("MQTT") + bytes([4, 3]) + b"\x00\x3c" + string("x"), 0x81),  # reserved flag
        (string("MQTT") + bytes([4, 0x1A]) + b"\x00\x3c" + string("x"), 0x81),  # will QoS 3
        (string("MQTT") + bytes([4, 2]) + b"\x00", 0x81),  # cut short
    ],
)
def test_a_bad_connect_is_refused_with_its_reason(body: bytes, reason: int) -> None:
    with pytest.raises(wire.MalformedError) as refused:
        wire.parse(wire.CONNECT << 4, body, 0)
    assert refused.value.reason == reason


def test_nothing_but_connect_comes_first() -> None:
    with pytest.raises(wire.MalformedError):
        wire.parse(wire.PINGREQ << 4, b"", 0)


def test_a_subscribe_carries_its_options() -> None:
    body = b"\x00\x07" + b"\x00" + string("a/#") + bytes([0x04 | 0x08 | 0x20 | 1])
    packet = wire.parse(wire.SUBSCRIBE << 4 | 2, body, 5)
    assert isinstance(packet, wire.Subscribe)
    (sub,) = packet.subscriptions
    assert (sub.topic_filter, sub.qos, sub.no_local, sub.retain_as_published) == (
        "a/#",
        1,
        True,
        True,
    )
    assert sub.retain_handling == 2


async def test_the_broker_refuses_sockets_past_its_limit_and_counts_them() -> None:
    import asyncio

    from bridges.broker.server import Broker, Limits
    from gateway import metrics

    broker = Broker(limits=Limits(max_connections=2, connect_timeout=5))
    await broker.start("127.0.0.1", 0)
    before = metrics.get("embedded_broker_refused", "too_many_connections")
    opened = [await asyncio.open_connection("127.0.0.1", broker.port) for _ in range(3)]
    try:
        reader, _ = opened[2]
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed at once
        assert metrics.get("embedded_broker_refused", "too_many_connections") == before + 1
    finally:
        for _, writer in opened:
            writer.close()
        await broker.close()
