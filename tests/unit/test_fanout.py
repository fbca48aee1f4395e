"""The fan-out hub's rules, on the in-memory transport with recording outlets."""

from collections.abc import AsyncIterator

import pytest

from gateway import metrics
from gateway.envelope import Envelope
from gateway.transport import Event, LocalTransport, messages_event
from protocols.fanout import PENDING_FRAMES, RoomHub, Subscriber
from protocols.outlets import CLOSE_SLOW, Frame


class Recorder:
    """An outlet that keeps what it was given; ``full`` makes it refuse like a stalled client."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.closed: int | None = None
        self.full = False

    def write(self, frame: Frame) -> bool:
        if self.full:
            return False
        self.texts.append(frame.text)
        return True

    def close(self, code: int) -> None:
        self.closed = code


def envelope(room: str, seq: int, message_id: str | None = None) -> Envelope:
    return {
        "id": message_id or f"id-{seq}",
        "room": room,
        "ts": "2026-11-21T10:00:00.000Z",
        "source": "mqtt",
        "sender": "meter",
        "topic": f"rooms/{room}/meter",
        "message": {"n": seq},
        "seq": seq,
    }


def event(*envelopes: Envelope) -> Event:
    return messages_event(list(envelopes))


@pytest.fixture
async def hub() -> AsyncIterator[RoomHub]:
    made = RoomHub(LocalTransport(capacity=100))
    yield made
    for task in (made._reader, made._renewer):
        if task is not None:
            task.cancel()


async def joined(hub: RoomHub, room: str, key: str, watermark: int = 0) -> Recorder:
    outlet = Recorder()
    subscriber = Subscriber(key, outlet)
    await hub.join(room, subscriber)
    subscriber.ready(watermark)
    return outlet


async def test_a_message_is_encoded_once_and_reaches_every_socket_of_its_room_only(
    hub: RoomHub,
) -> None:
    first, second = await joined(hub, "lab", "a"), await joined(hub, "lab", "b")
    other = await joined(hub, "hall", "c")
    hub.dispatch(event(envelope("lab", 1)))
    assert first.texts == second.texts
    assert len(first.texts) == 1
    assert '"type":"message"' in first.texts[0]
    assert '"gateway"' not in first.texts[0]
    assert other.texts == []


async def test_a_redelivered_copy_is_dropped_for_everyone(hub: RoomHub) -> None:
    outlet = await joined(hub, "lab", "a")
    before = metrics.get("duplicates_removed")
    hub.dispatch(event(envelope("lab", 1, "same")))
    hub.dispatch(event(envelope("lab", 2, "same")))  # a copy after a bridge crash
    assert len(outlet.texts) == 1
    assert metrics.get("duplicates_removed") == before + 1


async def test_a_joining_socket_waits_for_its_welcome_then_gets_only_newer_messages(
    hub: RoomHub,
) -> None:
    outlet = Recorder()
    subscriber = Subscriber("late", outlet)
    await hub.join("lab", subscriber)
    hub.dispatch(event(envelope("lab", 7), envelope("lab", 8)))
    assert outlet.texts == []  # held: its welcome is not out yet
    subscriber.ready(7)  # the welcome had everything up to seq 7
    assert len(outlet.texts) == 1
    assert '"seq":8' in outlet.texts[0]
    hub.dispatch(event(envelope("lab", 6, "late-seq")))  # another process's older message
    assert len(outlet.texts) == 1


async def test_a_socket_that_stops_reading_is_closed_with_1013_and_counted(hub: RoomHub) -> None:
    stalled, reader = await joined(hub, "lab", "stalled"), await joined(hub, "lab", "reader")
    stalled.full = True
    before = metrics.get("ws_closed", "slow_consumer")
    dropped = metrics.get("messages_dropped", "slow_consumer")
    for seq in range(1, 4):
        hub.dispatch(event(envelope("lab", seq)))
    assert stalled.closed == CLOSE_SLOW
    assert len(reader.texts) == 3  # the others are not held back
    assert metrics.get("ws_closed", "slow_consumer") == before + 1
    assert metrics.get("messages_dropped", "slow_consumer") == dropped + 3


async def test_a_socket_whose_welcome_never_goes_out_cannot_hold_unbounded_frames(
    hub: RoomHub,
) -> None:
    outlet = Recorder()
    await hub.join("lab", Subscriber("stuck", outlet))
    for seq in range(1, PENDING_FRAMES + 2):
        hub.dispatch(event(envelope("lab", seq)))
    assert outlet.closed == CLOSE_SLOW


async def test_presence_skips_the_member_it_is_about(hub: RoomHub) -> None:
    own, other = await joined(hub, "lab", "ws:me"), await joined(hub, "lab", "ws:you")
    member = {"key": "ws:me", "kind": "browser", "name": "me", "since": "now"}
    hub.dispatch({"type": "room.presence", "room": "lab", "event": "join", "member": member})
    assert own.texts == []
    assert '"event":"join"' in other.texts[0]


async def test_the_last_socket_out_takes_the_process_out_of_the_group(hub: RoomHub) -> None:
    outlet = Recorder()
    subscriber = Subscriber("a", outlet)
    await hub.join("lab", subscriber)
    rooms = hub.transport
    assert isinstance(rooms, LocalTransport)
    assert rooms.hubs_in("lab") == {hub.channel}
    await hub.leave("lab", subscriber)
    assert rooms.hubs_in("lab") == set()
