"""The fan-out hub's rules, on the in-memory transport with recording outlets."""

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway import metrics
from gateway.conf import GatewaySettings
from gateway.envelope import Envelope
from gateway.history import Missed
from gateway.presence import presence_for
from gateway.transport import (
    ROOM_PRESENCE,
    Event,
    LocalTransport,
    PresenceEvent,
    PresenceMember,
    messages_event,
)
from protocols import fanout
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
    for task in (*made._readers.values(), made._renewer):
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


async def test_events_still_queued_after_a_catch_up_are_not_sent_a_second_time(
    hub: RoomHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    # After the transport failed, the hub sends each room what history has; a Redis that kept
    # the hub's inbox (a promoted replica) then hands over the same messages again, more of
    # them than the per-room dedupe window holds.
    outlet = await joined(hub, "lab", "a")
    replayed = [envelope("lab", seq) for seq in range(1, 401)]

    class History:
        async def missed(self, room: str, since: int) -> Missed:
            assert (room, since) == ("lab", 0)
            return Missed(replayed, gap=False)

    monkeypatch.setattr(fanout, "history_for", History)
    assert await hub._catch_up()
    for start in range(0, len(replayed), 64):  # what was queued, as the transport gives it
        hub.dispatch(event(*replayed[start : start + 64]))
    hub.dispatch(event(envelope("lab", 401)))
    assert [json.loads(text)["seq"] for text in outlet.texts] == list(range(1, 402))


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


def presence_event(
    event: str, key: str, version: int, count: int, room: str = "lab"
) -> PresenceEvent:
    member: PresenceMember = {"key": key, "kind": "browser", "name": key, "since": "now"}
    return PresenceEvent(
        type=ROOM_PRESENCE,
        room=room,
        event=event,  # type: ignore[typeddict-item]
        member=member,
        version=version,
        count=count,
    )


def presence_frames(outlet: Recorder) -> list[dict[str, Any]]:
    frames = [json.loads(text) for text in outlet.texts]
    return [f for f in frames if f["type"] == "presence"]


@pytest.fixture
def presence_settings(settings: Any) -> None:
    settings.GATEWAY = GatewaySettings(
        presence_list_max=3, presence_interval=0.05, presence_count_interval=0.2
    )


async def listed(hub: RoomHub, room: str, key: str, version: int) -> Recorder:
    """A socket whose welcome listed the room's members at ``version``."""
    outlet = Recorder()
    subscriber = Subscriber(key, outlet)
    await hub.join(room, subscriber)
    subscriber.presence_version, subscriber.listed = version, True
    subscriber.ready(0)
    return outlet


async def test_joins_and_leaves_of_an_interval_go_out_as_one_frame(
    hub: RoomHub, presence_settings: None
) -> None:
    first, second = await listed(hub, "lab", "a", 0), await listed(hub, "lab", "b", 0)
    hub.dispatch(presence_event("join", "x", 1, 1))
    hub.dispatch(presence_event("join", "y", 2, 2))
    hub.dispatch(presence_event("leave", "x", 3, 1))  # the last change of a key wins
    assert first.texts == []  # gathered, not sent at once
    await asyncio.sleep(0.2)
    assert presence_frames(first) == presence_frames(second)
    (frame,) = presence_frames(first)
    assert frame["count"] == 1
    assert [m["key"] for m in frame["joined"]] == ["y"]
    assert [m["key"] for m in frame["left"]] == ["x"]


async def test_a_socket_is_not_sent_a_frame_holding_only_its_own_join(
    hub: RoomHub, presence_settings: None
) -> None:
    own, other = await listed(hub, "lab", "me", 1), await listed(hub, "lab", "you", 1)
    hub.dispatch(presence_event("join", "me", 2, 2))
    await asyncio.sleep(0.2)
    assert presence_frames(own) == []  # its welcome had it
    assert [m["key"] for m in presence_frames(other)[0]["joined"]] == ["me"]


async def test_the_count_is_the_newest_changes_whatever_order_events_come_in(
    hub: RoomHub, presence_settings: None
) -> None:
    outlet = await listed(hub, "lab", "a", 0)
    hub.dispatch(presence_event("join", "y", 6, 2))  # another process's newer change first
    hub.dispatch(presence_event("join", "x", 5, 1))
    await asyncio.sleep(0.2)
    (frame,) = presence_frames(outlet)
    assert frame["count"] == 2
    assert sorted(m["key"] for m in frame["joined"]) == ["x", "y"]


async def test_a_big_room_sends_the_count_alone_at_its_own_pace(
    hub: RoomHub, presence_settings: None
) -> None:
    outlet = await listed(hub, "lab", "a", 0)
    for n in range(1, 41):  # 40 joins past the list's limit of 3
        hub.dispatch(presence_event("join", f"k{n}", n, n))
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.5)
    frames = presence_frames(outlet)
    assert frames[-1] == {"type": "presence", "count": 40}
    assert len(frames) <= 6  # 40 joins over about 0.4 s: a frame per count interval
    assert all("joined" not in f for f in frames if f["count"] > 3)


async def test_a_socket_without_the_list_is_sent_it_whole_when_the_room_is_small_again(
    hub: RoomHub, presence_settings: None
) -> None:
    presence = presence_for()
    for key in ("p", "q"):
        await presence.join("lab", key, "browser", key, hold=False)
    outlet = Recorder()
    subscriber = Subscriber("counted", outlet)
    await hub.join("lab", subscriber)
    subscriber.presence_version, subscriber.listed = 2, False  # its welcome had the count only
    subscriber.ready(0)
    hub.dispatch(presence_event("leave", "gone", 3, 2))
    await asyncio.sleep(0.2)
    (frame,) = presence_frames(outlet)
    assert frame["count"] == 2
    assert sorted(m["key"] for m in frame["members"]) == ["p", "q"]
    assert subscriber.listed
    for key in ("p", "q"):
        await presence.leave("lab", key)


async def test_a_socket_whose_welcome_was_being_read_is_sent_the_list_after_it(
    hub: RoomHub, presence_settings: None
) -> None:
    presence = presence_for()
    await presence.join("lab", "p", "browser", "p", hold=False)
    outlet = Recorder()
    subscriber = Subscriber("late", outlet)
    await hub.join("lab", subscriber)  # its welcome is not read yet
    hub.dispatch(presence_event("join", "p", 1, 1))
    await asyncio.sleep(0.1)
    assert outlet.texts == []
    subscriber.presence_version, subscriber.listed = 0, True  # read before p joined
    subscriber.ready(0)
    await asyncio.sleep(0.2)
    (frame,) = presence_frames(outlet)
    assert [m["key"] for m in frame["members"]] == ["p"]  # what it may have missed
    await presence.leave("lab", "p")


async def test_the_last_socket_out_takes_the_process_out_of_the_group(hub: RoomHub) -> None:
    outlet = Recorder()
    subscriber = Subscriber("a", outlet)
    await hub.join("lab", subscriber)
    rooms = hub.transport
    assert isinstance(rooms, LocalTransport)
    assert rooms.hubs_in("lab") == {hub.channel}
    await hub.leave("lab", subscriber)
    assert rooms.hubs_in("lab") == set()
