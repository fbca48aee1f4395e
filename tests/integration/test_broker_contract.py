"""The broker contract: what devices and the gateway's bridge rely on an MQTT broker to do.

The same tests run against three brokers (`tests.support.brokers`): real Mosquitto, the
reference; amqtt, the broker ``make run`` has embedded, plain (anonymous clients, no permission
plugins); and the gateway's own embedded broker (``python -m bridges.broker``). So the embedded
default is shown to keep the contract Mosquitto keeps, and stays shown to.

Each test is bounded in time and uses topics of its own, on a broker of its own. A test that
needs what a broker does not offer (MQTT 5, shared subscriptions) is skipped, with the reason.
A known bug of a broker is not skipped: that test is an expected failure on that broker
(`known_bug`, strict), so the suite records the bug and goes red the day it is fixed.
"""

import asyncio
import contextlib
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import aiomqtt
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from tests.support.brokers import (
    BROKERS,
    BrokerUnderTest,
    Capability,
    embedded_built,
    run_amqtt,
    run_embedded,
    run_mosquitto,
)

pytestmark = pytest.mark.timeout(30)

V311 = aiomqtt.ProtocolVersion.V311
V5 = aiomqtt.ProtocolVersion.V5
ARRIVAL = 3.0  # seconds within which a message that is due arrives
QUIET = 1.0  # seconds a client is watched for messages it must not get
KEEPALIVE = 2  # seconds, for the clients whose will is at stake
# A broker gives up on a client silent for 1.5 keepalives; Mosquitto 2.0 looks every 5 s.
SILENCE_NOTICED = KEEPALIVE * 1.5 + 5 + 1

# Known bugs, by test and broker: those tests are expected to fail there (see `known_bug`).
KNOWN_BUGS: dict[str, dict[str, str]] = {}
Test = TypeVar("Test", bound=Callable[..., object])


def known_bug(broker: str, reason: str) -> Callable[[Test], Test]:
    """The test fails on ``broker`` because of a bug of that broker: a strict expected failure."""

    def register(test: Test) -> Test:
        KNOWN_BUGS.setdefault(test.__name__, {})[broker] = reason
        return test

    return register


@pytest.fixture(params=BROKERS)
def contract_broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BrokerUnderTest]:
    """Each broker in turn, started for the test alone."""
    name: str = request.param
    reason = KNOWN_BUGS.get(request.function.__name__, {}).get(name)
    if reason is not None:
        request.applymarker(pytest.mark.xfail(strict=True, reason=f"{name}: {reason}"))
    if name == "mosquitto":
        runner = run_mosquitto(tmp_path)
    elif name == "amqtt":
        runner = run_amqtt()
    else:
        if not embedded_built():
            pytest.skip("embedded broker not built")
        runner = run_embedded(tmp_path)
    with runner as broker:
        yield broker


def require(broker: BrokerUnderTest, *capabilities: Capability) -> None:
    """Skip the test, saying why, unless ``broker`` offers each of ``capabilities``."""
    for capability in capabilities:
        missing = broker.lacks(capability)
        if missing is not None:
            pytest.skip(missing)


def new_topic() -> str:
    """A topic prefix no other test uses."""
    return f"contract/{uuid.uuid4().hex[:12]}"


def client(
    broker: BrokerUnderTest, protocol: aiomqtt.ProtocolVersion = V311, **kwargs: Any
) -> aiomqtt.Client:
    """An aiomqtt client of ``broker`` (MQTT 3.1.1 unless told), anonymous."""
    return aiomqtt.Client(broker.host, broker.port, protocol=protocol, timeout=5, **kwargs)


def properties(packet_type: int) -> Properties:
    """MQTT 5 properties for a packet of ``packet_type`` (paho's class has no annotations)."""
    return Properties(packet_type)  # type: ignore[no-untyped-call]


async def messages(
    subscriber: aiomqtt.Client, *, within: float, until: int | None = None
) -> list[aiomqtt.Message]:
    """What ``subscriber`` receives within ``within`` seconds, or its first ``until`` messages."""
    received: list[aiomqtt.Message] = []

    async def collect() -> None:
        async for message in subscriber.messages:
            received.append(message)
            if until is not None and len(received) >= until:
                return

    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(collect(), within)
    return received


def text(message: aiomqtt.Message) -> str:
    assert isinstance(message.payload, bytes), message.payload
    return message.payload.decode()


def paho_connect(
    broker: BrokerUnderTest,
    *,
    will: tuple[str, bytes, bool] | None = None,
    keepalive: int = 10,
    looping: bool = False,
) -> paho.Client:
    """A paho client (MQTT 3.1.1), connected.

    ``will`` is its will: the topic, the payload, and whether it is retained (QoS 1). With
    ``looping``, its network loop runs on a thread of its own (it pings); without, nothing
    runs it: it says nothing more than what it is made to.
    """
    device = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"paho-{uuid.uuid4().hex[:12]}",
        protocol=paho.MQTTv311,
        reconnect_on_failure=False,
    )
    if will is not None:
        topic, payload, retain = will
        device.will_set(topic, payload, qos=1, retain=retain)
    device.connect(broker.host, broker.port, keepalive=keepalive)
    if looping:
        device.loop_start()
    deadline = time.monotonic() + 5
    while not device.is_connected():
        if time.monotonic() > deadline:
            raise TimeoutError(f"paho could not connect to {broker.name}")
        if looping:
            time.sleep(0.01)
        else:
            device.loop(timeout=0.05)
    return device


def publish_once(broker: BrokerUnderTest, topic: str, payload: str) -> None:
    """Connect, publish at QoS 0 and disconnect at once, as ``mosquitto_pub`` does."""
    device = paho_connect(broker)
    # Without a network loop, paho writes each packet as it is queued; DISCONNECT closes.
    device.publish(topic, payload, qos=0)
    device.disconnect()


async def mosquitto_pub(broker: BrokerUnderTest, topic: str, payload: str) -> None:
    process = await asyncio.create_subprocess_exec(
        "mosquitto_pub",
        *("-h", broker.host, "-p", str(broker.port), "-V", "mqttv311"),
        *("-t", topic, "-m", payload, "-q", "0"),
    )
    assert await asyncio.wait_for(process.wait(), 5) == 0


# Delivery.


async def test_every_qos_is_delivered_in_order_while_retained_messages_are_held(
    contract_broker: BrokerUnderTest,
) -> None:
    base, each = new_topic(), 30
    async with client(contract_broker) as publisher:
        for i in range(100):
            await publisher.publish(f"{base}/held/{i}", f"held {i}", qos=1, retain=True)
    async with client(contract_broker) as subscriber:
        await subscriber.subscribe(f"{base}/#", qos=2)
        held = await messages(subscriber, within=ARRIVAL, until=100)
        async with client(contract_broker) as publisher:
            for i in range(each):
                for qos in (0, 1, 2):
                    await publisher.publish(f"{base}/live/{qos}", str(i), qos=qos)
        live = await messages(subscriber, within=ARRIVAL, until=3 * each)
    assert sorted((m.topic.value, text(m), m.retain) for m in held) == sorted(
        (f"{base}/held/{i}", f"held {i}", True) for i in range(100)
    )
    by_qos = {
        qos: [int(text(m)) for m in live if m.topic.value == f"{base}/live/{qos}"]
        for qos in (0, 1, 2)
    }
    assert by_qos == {qos: list(range(each)) for qos in (0, 1, 2)}


@known_bug(
    "amqtt",
    "delivers at the subscription's QoS, whatever the publication's: a QoS 0 message reaches "
    "a QoS 2 subscription as QoS 2",
)
async def test_a_message_is_delivered_at_the_lower_of_its_qos_and_the_subscriptions(
    contract_broker: BrokerUnderTest,
) -> None:
    base = new_topic()
    async with client(contract_broker) as subscriber:
        await subscriber.subscribe(f"{base}/high/#", qos=2)
        await subscriber.subscribe(f"{base}/low/#", qos=0)
        async with client(contract_broker) as publisher:
            for level in ("high", "low"):
                for qos in (0, 1, 2):
                    await publisher.publish(f"{base}/{level}/{qos}", b"x", qos=qos)
        received = await messages(subscriber, within=ARRIVAL, until=6)
    assert sorted((m.topic.value, m.qos) for m in received) == sorted(
        [(f"{base}/high/{qos}", qos) for qos in (0, 1, 2)]
        + [(f"{base}/low/{qos}", 0) for qos in (0, 1, 2)]
    )


async def test_a_thousand_messages_at_500_a_second_all_arrive(
    contract_broker: BrokerUnderTest,
) -> None:
    topic, count, rate = new_topic(), 1000, 500.0
    loop = asyncio.get_running_loop()
    async with client(contract_broker) as subscriber:
        await subscriber.subscribe(topic, qos=0)
        async with client(contract_broker) as publisher:
            started = loop.time()
            for i in range(count):
                await publisher.publish(topic, str(i), qos=0)
                if i % 10 == 9:
                    await asyncio.sleep(max(0.0, started + (i + 1) / rate - loop.time()))
        received = await messages(subscriber, within=ARRIVAL, until=count)
    assert [int(text(m)) for m in received] == list(range(count))


@known_bug(
    "amqtt",
    "loses messages of clients that connect, publish and disconnect at once (8 to 42 of 50 "
    "measured) when retained messages match a filter some client holds: it is busy pushing "
    "them to the newcomer (see the retained-messages test) when the DISCONNECT comes",
)
@pytest.mark.parametrize("publisher", ["paho", "mosquitto_pub"])
async def test_one_shot_publishers_are_all_heard(
    contract_broker: BrokerUnderTest, publisher: str
) -> None:
    if publisher == "mosquitto_pub" and shutil.which("mosquitto_pub") is None:
        pytest.skip("mosquitto_pub is not installed (Debian's mosquitto-clients)")
    base, count = new_topic(), 50
    async with client(contract_broker) as holder:
        for i in range(3):
            await holder.publish(f"{base}/held/{i}", f"held {i}", qos=1, retain=True)
    async with client(contract_broker) as subscriber:
        await subscriber.subscribe(f"{base}/#", qos=1)
        held = await messages(subscriber, within=ARRIVAL, until=3)
        for i in range(count):
            if publisher == "paho":
                await asyncio.to_thread(publish_once, contract_broker, f"{base}/once", str(i))
            else:
                await mosquitto_pub(contract_broker, f"{base}/once", str(i))
        received = await messages(subscriber, within=ARRIVAL, until=count)
    assert len(held) == 3
    assert sorted(int(text(m)) for m in received) == list(range(count))


# Retained messages.


@known_bug(
    "amqtt",
    "sends each client that connects the retained messages matching any filter any client "
    "holds, whatever it subscribed to",
)
async def test_retained_messages_reach_only_matching_subscriptions(
    contract_broker: BrokerUnderTest,
) -> None:
    base = new_topic()
    async with client(contract_broker) as holder:
        await holder.publish(f"{base}/A/x", b"state", qos=1, retain=True)
    async with client(contract_broker) as reader:
        await reader.subscribe(f"{base}/A/#", qos=1)
        state = await messages(reader, within=ARRIVAL, until=1)
        async with client(contract_broker) as other, client(contract_broker) as talker:
            await other.subscribe(f"{base}/B/#", qos=1)
            await talker.publish(f"{base}/C/z", b"hello", qos=1)
            other_got, talker_got = await asyncio.gather(
                messages(other, within=QUIET), messages(talker, within=QUIET)
            )
    assert [(m.topic.value, m.payload, m.retain) for m in state] == [
        (f"{base}/A/x", b"state", True)
    ]
    assert [m.topic.value for m in other_got] == []
    assert [m.topic.value for m in talker_got] == []


async def test_an_empty_retained_message_clears_the_state(
    contract_broker: BrokerUnderTest,
) -> None:
    topic = new_topic()
    async with client(contract_broker) as holder:
        await holder.publish(topic, b"on", qos=1, retain=True)
        async with client(contract_broker) as first:
            await first.subscribe(topic, qos=1)
            before = await messages(first, within=ARRIVAL, until=1)
        await holder.publish(topic, b"", qos=1, retain=True)
    async with client(contract_broker) as later:
        await later.subscribe(topic, qos=1)
        after = await messages(later, within=QUIET)
    assert [(m.payload, m.retain) for m in before] == [(b"on", True)]
    assert [m.payload for m in after] == []


# Last will.


async def test_a_will_is_published_when_the_client_closes_its_socket(
    contract_broker: BrokerUnderTest,
) -> None:
    topic = f"{new_topic()}/status"
    async with client(contract_broker) as watcher:
        await watcher.subscribe(topic, qos=1)
        device = await asyncio.to_thread(
            paho_connect, contract_broker, will=(topic, b"gone", False), keepalive=KEEPALIVE
        )
        socket = device.socket()
        assert socket is not None
        socket.close()  # no DISCONNECT: as a crash would
        will = await messages(watcher, within=ARRIVAL, until=1)
    assert [(m.payload, m.retain) for m in will] == [(b"gone", False)]
    async with client(contract_broker) as later:
        await later.subscribe(topic, qos=1)
        kept = await messages(later, within=QUIET)
    assert [m.payload for m in kept] == []  # the will was not retained


@known_bug(
    "amqtt",
    "never drops a client that stops talking (keepalive is not enforced), so its will is never "
    "published",
)
async def test_a_will_is_published_when_the_client_goes_silent(
    contract_broker: BrokerUnderTest,
) -> None:
    topic = f"{new_topic()}/status"
    async with client(contract_broker) as watcher:
        await watcher.subscribe(topic, qos=1)
        device = await asyncio.to_thread(
            paho_connect, contract_broker, will=(topic, b"gone", True), keepalive=KEEPALIVE
        )
        # Its network loop never runs: no PINGREQ, the socket open (a hung device, a dead link).
        try:
            will = await messages(watcher, within=SILENCE_NOTICED, until=1)
        finally:
            socket = device.socket()
            if socket is not None:
                socket.close()
    assert [(m.payload, m.retain) for m in will] == [(b"gone", False)]
    async with client(contract_broker) as later:
        await later.subscribe(topic, qos=1)
        kept = await messages(later, within=ARRIVAL, until=1)
    assert [(m.payload, m.retain) for m in kept] == [(b"gone", True)]  # retained


async def test_a_live_client_and_a_clean_disconnect_do_not_publish_the_will(
    contract_broker: BrokerUnderTest,
) -> None:
    topic = f"{new_topic()}/status"
    async with client(contract_broker) as watcher:
        await watcher.subscribe(topic, qos=1)
        device = await asyncio.to_thread(
            paho_connect,
            contract_broker,
            will=(topic, b"gone", True),
            keepalive=KEEPALIVE,
            looping=True,  # idle, but pinging
        )
        try:
            idle = await messages(watcher, within=KEEPALIVE * 2)
            device.disconnect()
        finally:
            await asyncio.to_thread(device.loop_stop)
        assert [m.payload for m in idle] == []  # alive: not given up on
        async with client(contract_broker) as later:
            await later.subscribe(topic, qos=1)
            after, kept = await asyncio.gather(
                messages(watcher, within=QUIET), messages(later, within=QUIET)
            )
    assert [m.payload for m in after + kept] == []  # gone cleanly: no will, none retained


# Sessions.


def session_options(protocol: aiomqtt.ProtocolVersion) -> dict[str, Any]:
    """What a client asks for to keep its session while it is away."""
    if protocol == V311:
        return {"clean_session": False}
    connect = properties(PacketTypes.CONNECT)
    connect.SessionExpiryInterval = 300  # seconds
    return {"clean_start": False, "properties": connect}


@known_bug(
    "amqtt",
    "keeps no session for a client admitted anonymously: clean_session=false is ignored and "
    "what it missed is lost (and to a client with a user name, it hands what it kept with the "
    "retain flag set)",
)
@pytest.mark.parametrize("protocol", [V311, V5], ids=["mqtt3.1.1", "mqtt5"])
async def test_a_persistent_session_gets_what_it_missed(
    contract_broker: BrokerUnderTest, protocol: aiomqtt.ProtocolVersion
) -> None:
    require(contract_broker, "persistent_sessions")
    if protocol == V5:
        require(contract_broker, "mqtt5")
    topic, identifier, count = new_topic(), f"persistent-{uuid.uuid4().hex[:12]}", 10
    options = session_options(protocol)
    async with client(contract_broker, protocol, identifier=identifier, **options) as device:
        await device.subscribe(topic, qos=1)
    async with client(contract_broker) as publisher:
        for i in range(count):
            await publisher.publish(topic, str(i), qos=1)
    async with client(contract_broker, protocol, identifier=identifier, **options) as device:
        missed = await messages(device, within=ARRIVAL, until=count)
        assert [(text(m), m.qos, m.retain) for m in missed] == [
            (str(i), 1, False) for i in range(count)
        ]
        async with client(contract_broker) as publisher:
            await publisher.publish(topic, b"live", qos=1)  # the subscription is still there
        live = await messages(device, within=ARRIVAL, until=1)
    assert [m.payload for m in live] == [b"live"]


# MQTT 5.


async def test_user_properties_and_content_type_arrive_unchanged(
    contract_broker: BrokerUnderTest,
) -> None:
    require(contract_broker, "mqtt5")
    topic = new_topic()
    sent = properties(PacketTypes.PUBLISH)
    sent.UserProperty = [("room", "plant"), ("trace", "1"), ("trace", "2")]
    sent.ContentType = "application/json"
    async with client(contract_broker, V5) as subscriber:
        await subscriber.subscribe(topic, qos=1)
        async with client(contract_broker, V5) as publisher:
            await publisher.publish(topic, b"{}", qos=1, properties=sent)
        received = await messages(subscriber, within=ARRIVAL, until=1)
    assert len(received) == 1
    got = received[0].properties
    assert got is not None
    assert getattr(got, "UserProperty", None) == [("room", "plant"), ("trace", "1"), ("trace", "2")]
    assert getattr(got, "ContentType", None) == "application/json"


async def test_a_shared_subscription_hands_each_message_to_one_member(
    contract_broker: BrokerUnderTest,
) -> None:
    require(contract_broker, "mqtt5", "shared_subscriptions")
    topic, count = new_topic(), 20
    async with client(contract_broker, V5) as first, client(contract_broker, V5) as second:
        for member in (first, second):
            await member.subscribe(f"$share/workers/{topic}", qos=1)
        async with client(contract_broker, V5) as publisher:
            for i in range(count):
                await publisher.publish(topic, str(i), qos=1)
        got = await asyncio.gather(messages(first, within=QUIET), messages(second, within=QUIET))
    each = [[int(text(m)) for m in member] for member in got]
    assert sorted(each[0] + each[1]) == list(range(count))  # every one, none twice


async def test_no_local_keeps_a_clients_own_publications_from_it(
    contract_broker: BrokerUnderTest,
) -> None:
    require(contract_broker, "mqtt5")
    topic = new_topic()
    async with client(contract_broker, V5) as device, client(contract_broker, V5) as other:
        await device.subscribe(topic, options=SubscribeOptions(qos=1, noLocal=True))
        await device.publish(topic, b"mine", qos=1)
        await other.publish(topic, b"theirs", qos=1)
        received = await messages(device, within=QUIET)
    assert [m.payload for m in received] == [b"theirs"]
