"""The bridge's MQTT client (`MqttLink`) on a real Mosquitto: what it hands on, and when it acks."""

import asyncio
from collections.abc import Awaitable, Callable

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bridges.client import Incoming, MqttLink, RedeliverError
from bridges.conf import MqttSettings
from gateway import metrics
from tests.support.processes import Mosquitto, wait_for

pytestmark = pytest.mark.timeout(60)


def link_on(
    broker: Mosquitto,
    handler: Callable[[list[Incoming]], Awaitable[None]],
    *,
    protocol: str = "5",
    client_id: str = "link-test",
    queue_size: int = 1000,
    qos: int = 1,
    max_payload_bytes: int = 16 * 1024 * 1024,
) -> MqttLink:
    settings = MqttSettings(
        host="127.0.0.1",
        port=broker.port,
        client_id=client_id,
        protocol="5" if protocol == "5" else "3.1.1",
    )
    return MqttLink(
        settings,
        filters=[("devices/#", qos)],
        handler=handler,
        origin="gw-test",
        shared_group="gw-test",
        queue_size=queue_size,
        max_payload_bytes=max_payload_bytes,
    )


def publisher(broker: Mosquitto) -> paho.Client:
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    return client


def properties(**values: object) -> Properties:
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    for name, value in values.items():
        setattr(props, name, value)
    return props


async def started(link: MqttLink) -> None:
    await link.start()
    await asyncio.wait_for(link.connected.wait(), 10)
    await asyncio.sleep(0.3)  # the subscriptions are confirmed


async def until(condition: Callable[[], bool], what: str, seconds: float = 10) -> None:
    await asyncio.to_thread(wait_for, condition, what, seconds)


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_state_and_live_messages_arrive_with_their_flags_and_properties(
    mosquitto: Mosquitto, protocol: str
) -> None:
    device = publisher(mosquitto)
    device.publish("devices/lamp/state", b"on", qos=1, retain=True).wait_for_publish(5)
    received: list[Incoming] = []

    async def handler(batch: list[Incoming]) -> None:
        received.extend(batch)

    link = link_on(mosquitto, handler, protocol=protocol)
    await started(link)
    try:
        await until(lambda: len(received) == 1, "the retained state")
        device.publish(
            "devices/lamp/reading",
            b'{"lux": 3}',
            qos=1,
            properties=properties(
                ContentType="application/json", UserProperty=[("gateway", "gw-2")]
            ),
        ).wait_for_publish(5)
        await until(lambda: len(received) == 2, "the live message")
    finally:
        await link.stop(drain_seconds=2)
        device.disconnect()
        device.loop_stop()
    state, live = received
    assert (state.topic, state.payload, state.retain, state.snapshot) == (
        "devices/lamp/state",
        b"on",
        True,
        True,
    )
    assert (live.topic, live.payload, live.qos, live.retain, live.snapshot, live.dup) == (
        "devices/lamp/reading",
        b'{"lux": 3}',
        1,
        False,
        False,
        False,
    )
    assert type(live.payload) is bytes
    if protocol == "5":
        assert (live.content_type, live.origin) == ("application/json", "gw-2")
    else:  # MQTT 3.1.1 carries no properties
        assert (live.content_type, live.origin) == (None, None)


async def test_a_message_not_handed_on_is_redelivered_flagged_dup(mosquitto: Mosquitto) -> None:
    """QoS 1: no acknowledgement before the hand-off, so the broker delivers it again."""
    first: list[Incoming] = []

    async def refuse(batch: list[Incoming]) -> None:
        first.extend(batch)
        raise RedeliverError("the rooms are unreachable and the bridge is stopping")

    device = publisher(mosquitto)
    link = link_on(mosquitto, refuse)
    await started(link)
    try:
        device.publish("devices/door/open", b"1", qos=1).wait_for_publish(5)
        await until(lambda: len(first) == 1, "the first delivery")
    finally:
        await link.stop(drain_seconds=2)

    again: list[Incoming] = []

    async def accept(batch: list[Incoming]) -> None:
        again.extend(batch)

    link = link_on(mosquitto, accept)  # the same client id: the same session
    await started(link)
    try:
        await until(lambda: len(again) == 1, "the redelivery")
        await asyncio.sleep(0.5)
    finally:
        await link.stop(drain_seconds=2)
    assert [(m.topic, m.payload, m.mid, m.dup) for m in first] == [
        ("devices/door/open", b"1", first[0].mid, False)
    ]
    assert [(m.topic, m.payload, m.mid, m.dup) for m in again] == [
        ("devices/door/open", b"1", first[0].mid, True)
    ]

    # Acknowledged this time: a third session gets nothing.
    third: list[Incoming] = []

    async def record(batch: list[Incoming]) -> None:
        third.extend(batch)

    link = link_on(mosquitto, record)
    await started(link)
    await asyncio.sleep(1)
    await link.stop(drain_seconds=2)
    device.disconnect()
    device.loop_stop()
    assert third == []


async def test_a_burst_goes_on_together_in_order_and_a_full_inbox_stops_reading(
    mosquitto: Mosquitto,
) -> None:
    batches: list[list[Incoming]] = []
    release = asyncio.Event()

    async def slow(batch: list[Incoming]) -> None:
        batches.append(batch)
        await release.wait()

    device = publisher(mosquitto)
    link = link_on(mosquitto, slow, queue_size=50)
    await started(link)
    try:
        for n in range(300):
            device.publish("devices/meter/count", str(n).encode(), qos=0)
        await until(lambda: len(batches) == 1, "the first hand-off")
        await asyncio.sleep(1)  # the rest would be read by now, had the link gone on reading
        assert len(batches) == 1
        assert len(link._inbox) <= 50  # the broker holds the rest
        release.set()
        await until(lambda: sum(map(len, batches)) == 300, "every message")
    finally:
        await link.stop(drain_seconds=2)
        device.disconnect()
        device.loop_stop()
    assert [int(m.payload) for batch in batches for m in batch] == list(range(300))
    assert len(batches) < 30  # messages that waited went on together, not one by one
    assert max(map(len, batches)) <= 256


async def test_qos_2_goes_through_once_and_is_completed(mosquitto: Mosquitto) -> None:
    """QoS 2 both ways: a device's message is handed on once; the bridge's own is confirmed."""
    received: list[Incoming] = []

    async def handler(batch: list[Incoming]) -> None:
        received.extend(batch)

    device = publisher(mosquitto)
    link = link_on(mosquitto, handler, client_id="link-qos2", qos=2)
    await started(link)
    heard: list[paho.MQTTMessage] = []
    device.on_message = lambda _client, _userdata, message: heard.append(message)
    device.subscribe("out/#", qos=2)
    try:
        device.publish("devices/valve/close", b"now", qos=2).wait_for_publish(5)
        await until(lambda: len(received) == 1, "the QoS 2 message")
        await asyncio.wait_for(link.publish("out/valve", b"closed", qos=2), 5)
        await until(lambda: len(heard) == 1, "the bridge's QoS 2 publication")
        await asyncio.sleep(0.5)
    finally:
        await link.stop(drain_seconds=2)
    assert [(m.topic, m.payload, m.qos) for m in received] == [("devices/valve/close", b"now", 2)]
    assert [(m.topic, m.payload, m.qos) for m in heard] == [("out/valve", b"closed", 2)]

    # Completed: the same session gets nothing again.
    again: list[Incoming] = []

    async def record(batch: list[Incoming]) -> None:
        again.extend(batch)

    link = link_on(mosquitto, record, client_id="link-qos2", qos=2)
    await started(link)
    await asyncio.sleep(1)
    await link.stop(drain_seconds=2)
    device.disconnect()
    device.loop_stop()
    assert again == []


async def test_a_message_too_large_to_hold_is_counted_acknowledged_and_the_next_goes_on(
    mosquitto: Mosquitto,
) -> None:
    received: list[Incoming] = []

    async def handler(batch: list[Incoming]) -> None:
        received.extend(batch)

    device = publisher(mosquitto)
    link = link_on(mosquitto, handler, client_id="link-big", max_payload_bytes=1024)
    before = metrics.get("messages_dropped", "payload_too_big")
    await started(link)
    try:
        huge = b"x" * (link.max_packet_bytes + 100_000)
        device.publish("devices/camera/frame", huge, qos=1).wait_for_publish(5)
        device.publish("devices/camera/status", b"ok", qos=1).wait_for_publish(5)
        await until(lambda: len(received) == 1, "the message after the large one")
    finally:
        await link.stop(drain_seconds=2)
        device.disconnect()
        device.loop_stop()
    assert [(m.topic, m.payload) for m in received] == [("devices/camera/status", b"ok")]
    assert metrics.get("messages_dropped", "payload_too_big") == before + 1

    # Acknowledged: a new session of the same client gets neither again.
    again: list[Incoming] = []

    async def record(batch: list[Incoming]) -> None:
        again.extend(batch)

    link = link_on(mosquitto, record, client_id="link-big")
    await started(link)
    await asyncio.sleep(1)
    await link.stop(drain_seconds=2)
    assert again == []


async def test_a_qos_2_message_held_across_a_reconnect_is_taken_again_and_completed(
    mosquitto: Mosquitto,
) -> None:
    """A handler holds a QoS 2 message (its shard is down) while the link reconnects: the old
    connection can no longer acknowledge it, so the broker's redelivery on the new one is
    handed on (a copy, by its id) and acknowledged there; nothing stays stuck."""
    deliveries: list[Incoming] = []

    async def hold_the_first(batch: list[Incoming]) -> list[Incoming]:
        deliveries.extend(batch)
        return batch if len(deliveries) == 1 else []

    device = publisher(mosquitto)
    link = link_on(mosquitto, hold_the_first, client_id="link-qos2-held", qos=2)
    await started(link)
    try:
        device.publish("devices/valve/open", b"now", qos=2).wait_for_publish(5)
        await until(lambda: len(deliveries) == 1, "the QoS 2 message")
        assert link._conn is not None
        link._conn.abort()  # the link drops; the session stays with the broker
        await until(lambda: len(deliveries) == 2, "its redelivery on the new connection")
        link.acknowledge(deliveries[:1])  # too late for the old connection: nothing is sent
        await asyncio.sleep(0.5)
    finally:
        await link.stop(drain_seconds=2)
    first, again = deliveries
    assert (again.topic, again.payload, again.mid, again.dup) == (
        "devices/valve/open",
        b"now",
        first.mid,
        True,
    )
    assert again.connection != first.connection

    # Completed on the new connection: the same session gets nothing more.
    later: list[Incoming] = []

    async def record(batch: list[Incoming]) -> None:
        later.extend(batch)

    link = link_on(mosquitto, record, client_id="link-qos2-held", qos=2)
    await started(link)
    await asyncio.sleep(1)
    await link.stop(drain_seconds=2)
    device.disconnect()
    device.loop_stop()
    assert later == []
