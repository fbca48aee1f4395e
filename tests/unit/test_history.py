"""History: ordering, merging the recent window with the database, and telling of gaps."""

from collections.abc import AsyncIterator, Callable
from datetime import timedelta

import pytest

from gateway.envelope import new_envelope
from gateway.history import History, LocalWindow
from gateway.models import Message

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
async def make_history() -> AsyncIterator[Callable[..., History]]:
    """Histories on the in-process window, each closed (writer stopped) after the test."""
    made: list[History] = []

    def make(window: int = 3, max_messages: int = 100) -> History:
        history = History(
            LocalWindow(window=window), max_messages=max_messages, max_age=timedelta(days=1)
        )
        made.append(history)
        return history

    yield make
    for history in made:
        await history.close()


async def append(history: History, room: str, text: str, message_id: str | None = None) -> int:
    envelope = new_envelope(
        room=room, message=text, source="ws", sender="t", gateway="g", message_id=message_id
    )
    await history.append([envelope])
    return envelope["seq"]


async def test_seq_orders_each_room_on_its_own(make_history: Callable[..., History]) -> None:
    history = make_history()
    assert [await append(history, "a", "x") for _ in range(3)] == [1, 2, 3]
    assert await append(history, "b", "y") == 1
    await history.flush()
    assert await Message.objects.filter(room="a").acount() == 3


async def test_missed_joins_the_database_and_the_window_and_tells_of_gaps(
    make_history: Callable[..., History],
) -> None:
    history = make_history(window=3, max_messages=4)
    for n in range(1, 7):
        await append(history, "pruned", f"m{n}")
    await history.flush()
    await Message.objects.filter(room="pruned", seq__lte=2).adelete()  # retention took 1 and 2
    kept = await history.missed("pruned", since=2)
    assert ([m["message"] for m in kept.messages], kept.gap) == (["m3", "m4", "m5", "m6"], False)
    gone = await history.missed("pruned", since=1)
    assert ([m["seq"] for m in gone.messages], gone.gap) == ([3, 4, 5, 6], True)
    assert (await history.missed("pruned", since=6)).messages == []


async def test_more_missed_than_can_be_sent_gives_the_newest_and_a_gap(
    make_history: Callable[..., History],
) -> None:
    history = make_history(window=10)
    for n in range(8):
        await append(history, "capped", f"m{n}")
    missed = await history.missed("capped", since=0, limit=3)
    assert ([m["message"] for m in missed.messages], missed.gap) == (["m5", "m6", "m7"], True)


async def test_a_redelivered_message_is_stored_once(make_history: Callable[..., History]) -> None:
    history = make_history()
    await append(history, "redelivered", "once", message_id="same")
    await append(history, "redelivered", "once", message_id="same")
    await history.flush()
    assert await Message.objects.filter(room="redelivered").acount() == 1
    assert [m["message"] for m in (await history.missed("redelivered", since=0)).messages] == [
        "once"
    ]


async def test_a_lost_counter_is_seeded_above_the_database(
    make_history: Callable[..., History],
) -> None:
    history = make_history()
    await append(history, "seeded", "before")
    await history.flush()
    fresh = make_history()  # a restarted Redis: no counter, no window
    seq = await append(fresh, "seeded", "after")
    assert seq > 1
    stored = [m["seq"] async for m in Message.objects.filter(room="seeded").values("seq")]
    assert seq > max(stored)
