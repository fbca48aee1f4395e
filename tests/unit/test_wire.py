"""MQTT packets both ways (the embedded broker's and the bridge client's): what is read never
fails but as MalformedError, and what is written reads back the same on the other side."""

import contextlib
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridges import wire

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


# The client's side: what the bridge writes, the broker reads; what the broker writes, it reads.

_optional_text = st.none() | _text


@given(
    version=st.sampled_from([4, 5]),
    client_id=_text,
    clean_start=st.booleans(),
    keepalive=st.integers(0, 65535),
    username=_optional_text,
    password=st.none() | st.binary(max_size=20),
    will=st.none()
    | st.builds(
        wire.Will,
        topic=_text.filter(bool),
        payload=st.binary(max_size=30),
        qos=st.integers(0, 2),
        retain=st.booleans(),
    ),
    session_expiry=st.integers(0, 2**32 - 1),
)
def test_a_connect_the_client_writes_the_broker_reads(
    version: int,
    client_id: str,
    clean_start: bool,
    keepalive: int,
    username: str | None,
    password: bytes | None,
    will: wire.Will | None,
    session_expiry: int,
) -> None:
    properties: wire.Properties = [(wire.SESSION_EXPIRY, session_expiry)] if version == 5 else []
    sent = wire.Connect(
        version, client_id, clean_start, keepalive, username, password, will, properties
    )
    got = wire.parse(*split(wire.connect(sent)), 0)
    assert isinstance(got, wire.Connect)
    if version == 4 and username is None:
        sent.password = None  # MQTT 3.1.1 has no password without a user name
    assert got == sent


@given(
    version=st.sampled_from([4, 5]),
    packet_id=st.integers(1, 65535),
    options=st.lists(
        st.tuples(
            _text.filter(bool), st.integers(0, 2), st.booleans(), st.booleans(), st.integers(0, 2)
        ),
        min_size=1,
        max_size=4,
    ),
    identifier=st.none() | st.integers(1, 268_435_455),
)
def test_a_subscribe_and_unsubscribe_the_client_writes_the_broker_reads(
    version: int,
    packet_id: int,
    options: list[tuple[str, int, bool, bool, int]],
    identifier: int | None,
) -> None:
    subscriptions = [
        wire.Subscription(topic, qos, *flags if version == 5 else (False, False, 0))
        for topic, qos, *flags in options
    ]
    properties: wire.Properties = []
    if version == 5 and identifier is not None:
        properties = [(wire.SUBSCRIPTION_ID, identifier)]
    sent = wire.Subscribe(packet_id, subscriptions, properties)
    assert wire.parse(*split(wire.subscribe(sent, version)), version) == sent
    filters = [sub.topic_filter for sub in subscriptions]
    unsubscribe = wire.Unsubscribe(packet_id, filters)
    assert wire.parse(*split(wire.unsubscribe(unsubscribe, version)), version) == unsubscribe


@pytest.mark.parametrize("version", [4, 5])
def test_what_the_broker_writes_the_client_reads(version: int) -> None:
    properties: wire.Properties = [(wire.RECEIVE_MAXIMUM, 20)] if version == 5 else []
    connack = wire.connack(version, 0, session_present=True, properties=properties)
    assert wire.parse_from_server(*split(connack), version) == wire.Connack(True, 0, properties)
    granted = wire.suback(9, [0, 1, 0x80], version)
    assert wire.parse_from_server(*split(granted), version) == wire.Granted(
        wire.SUBACK, 9, [0, 1, 0x80]
    )
    unsuback = wire.parse_from_server(*split(wire.unsuback(9, [0], version)), version)
    assert unsuback == wire.Granted(wire.UNSUBACK, 9, [0] if version == 5 else [])
    for kind in (wire.PUBACK, wire.PUBREC, wire.PUBREL, wire.PUBCOMP):
        reason = 0x87 if version == 5 else 0
        packet = wire.ack(kind, 300, version, reason)
        assert wire.parse_from_server(*split(packet), version) == wire.Ack(kind, 300, reason)
    assert wire.parse_from_server(*split(wire.PINGRESP_PACKET), version) == wire.Ping()
    if version == 5:
        packet = wire.disconnect(0x8B)
        assert wire.parse_from_server(*split(packet), version) == wire.Disconnect(0x8B)


@given(first=st.integers(0, 255), body=st.binary(max_size=64), version=st.sampled_from([4, 5]))
def test_any_bytes_from_a_server_parse_or_are_refused_as_malformed(
    first: int, body: bytes, version: int
) -> None:
    with contextlib.suppress(wire.MalformedError):
        wire.parse_from_server(first, body, version)


def test_a_topic_that_is_not_utf8_is_refused_with_what_acknowledging_it_takes() -> None:
    body = struct.pack(">H", 2) + b"\xff\xfe" + struct.pack(">H", 77) + b"\x00" + b"payload"
    with pytest.raises(wire.TopicError) as refused:
        wire.parse_publish(wire.PUBLISH << 4 | 2, body, 5)
    assert (refused.value.qos, refused.value.packet_id) == (1, 77)


@given(
    payloads=st.lists(st.binary(max_size=300), min_size=1, max_size=8),
    cuts=st.lists(st.integers(1, 400), max_size=20),
)
def test_the_framer_gives_back_the_packets_however_the_bytes_are_cut(
    payloads: list[bytes], cuts: list[int]
) -> None:
    packets = [
        wire.publish(wire.Publish(f"t/{n}", payload, 1, False, packet_id=n + 1), 5)
        for n, payload in enumerate(payloads)
    ]
    stream = b"".join(packets)
    framer = wire.Framer(limit=1024)
    got: list[tuple[int, bytes]] = []
    at = 0
    for size in [*cuts, len(stream)]:
        framer.feed(stream[at : at + size])
        at += size
        while (packet := framer.next()) is not None:
            assert isinstance(packet, tuple)
            got.append(packet)
    assert got == [split(packet) for packet in packets]
    assert framer.pending() == 0


@pytest.mark.parametrize("chunk", [7, 1000, 100_000])
def test_the_framer_skips_a_packet_over_its_limit_and_goes_on(chunk: int) -> None:
    big = wire.publish(wire.Publish("big/one", b"x" * 50_000, 1, False, packet_id=42), 5)
    after = wire.publish(wire.Publish("small/one", b"ok", 0, False), 5)
    stream = big + after
    framer = wire.Framer(limit=10_000)
    got: list[tuple[int, bytes] | wire.Oversized] = []
    for at in range(0, len(stream), chunk):
        framer.feed(stream[at : at + chunk])
        while (packet := framer.next()) is not None:
            got.append(packet)
        assert framer.pending() <= max(chunk, wire.Framer.HEAD)  # never the whole big packet
    oversized, small = got
    assert isinstance(oversized, wire.Oversized)
    assert wire.oversized_publish(oversized) == (1, 42)
    assert oversized.length == len(big) - 4  # a 3-byte remaining length after the first byte
    assert small == split(after)


@given(
    topic=_text,
    payload=st.binary(max_size=50),
    qos=st.integers(0, 2),
    packet_id=st.integers(1, 65535),
    properties=_properties,
    version=st.sampled_from([4, 5]),
)
def test_the_fast_publish_reader_reads_what_the_parser_reads(
    topic: str,
    payload: bytes,
    qos: int,
    packet_id: int,
    properties: wire.Properties,
    version: int,
) -> None:
    sent = wire.Publish(topic, payload, qos, False, False, packet_id if qos else 0, properties)
    first, body = split(wire.publish(sent, version))
    assert wire.parse_publish(first, body, version) == wire.parse(first, body, version)


@given(first=st.integers(0x30, 0x3F), body=st.binary(max_size=40), version=st.sampled_from([4, 5]))
def test_the_fast_publish_reader_refuses_what_the_parser_refuses(
    first: int, body: bytes, version: int
) -> None:
    try:
        expected = wire.parse(first, body, version)
    except wire.MalformedError:
        with pytest.raises(wire.MalformedError):
            wire.parse_publish(first, body, version)
    else:
        assert wire.parse_publish(first, body, version) == expected
