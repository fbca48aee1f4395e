"""History: ordering, merging the recent window with the database, and telling of gaps."""

from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.db import DataError, OperationalError

from gateway import history as history_module
from gateway import metrics
from gateway.envelope import new_envelope
from gateway.history import History, LocalWindow, _prune
from gateway.jsonutil import dumps
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


async def test_the_window_keeps_a_room_within_its_bytes_newest_first() -> None:
    window = LocalWindow(window=1000, max_bytes=4000)
    await window.seed("big", 0)
    await window.seed("small", 0)
    await window.append(
        [new_envelope(room="small", message="s", source="ws", sender="t", gateway="g")]
    )
    for n in range(50):  # about 600 bytes each as JSON
        envelope = new_envelope(
            room="big", message="\x01" * 80, source="mqtt", sender="d", gateway="g"
        )
        envelope["message"] = f"{n}:" + envelope["message"]
        await window.append([envelope])
    kept = await window.after("big", 0, 1000)
    assert 1 < len(kept) < 50
    assert [m["seq"] for m in kept] == list(range(51 - len(kept), 51))  # the newest, no hole
    assert sum(len(dumps(m)) for m in kept) <= 4000 + 20 * len(kept)  # seq adds a few bytes
    assert len(await window.after("small", 0, 10)) == 1  # another room keeps its own


async def test_the_database_keeps_a_room_within_its_bytes_and_a_huge_message_alone(
    make_history: Callable[..., History],
) -> None:
    history = History(
        LocalWindow(window=10), max_messages=1000, max_age=timedelta(days=1), max_bytes=5000
    )
    try:
        for n in range(40):
            await append(history, "flooded", f"{n}:" + "\x01" * 100)  # ~700 bytes stored
        await append(history, "quiet", "kept")
        await history.flush()  # held to its bytes as it was written
        rows = [r async for r in Message.objects.filter(room="flooded").order_by("seq")]
        assert 1 < len(rows) < 40
        assert [r.seq for r in rows] == list(range(41 - len(rows), 41))
        assert sum(r.size for r in rows) <= 5000
        assert all(r.size == len(dumps(r.envelope).encode()) for r in rows)
        assert await Message.objects.filter(room="quiet").acount() == 1
        # One message over the whole bound: the newest stays, alone.
        await append(history, "flooded", "x" * 6000)
        await history.flush()
        await sync_to_async(_prune)({"flooded"}, 1000, timedelta(days=1), 5000)
        assert [r.seq async for r in Message.objects.filter(room="flooded")] == [41]
    finally:
        await history.close()


async def test_a_page_gives_the_oldest_after_since_and_says_there_is_more(
    make_history: Callable[..., History],
) -> None:
    history = make_history(window=10)
    for n in range(8):
        await append(history, "paged", f"m{n}")
    first = await history.missed("paged", since=0, limit=3, page=True)
    assert ([m["seq"] for m in first.messages], first.gap, first.more) == ([1, 2, 3], False, True)
    last = await history.missed("paged", since=6, limit=3, page=True)
    assert ([m["seq"] for m in last.messages], last.more) == ([7, 8], False)


async def test_a_row_the_database_refuses_is_left_out_and_the_rest_written(
    make_history: Callable[..., History], monkeypatch: pytest.MonkeyPatch
) -> None:
    history = make_history()
    seqs = [await append(history, "mixed", f"m{n}") for n in range(3)]
    real = history_module._write_rows

    def refuse_the_middle(envelopes: list[Any], hold: Any) -> None:
        if any(e["message"] == "m1" for e in envelopes):
            raise DataError("value refused by the database")
        real(envelopes, hold)

    monkeypatch.setattr(history_module, "_write_rows", refuse_the_middle)
    before = metrics.get("history_rows_lost", "refused_by_database")
    await history.flush()
    stored = [m.seq async for m in Message.objects.filter(room="mixed").order_by("seq")]
    assert stored == [seqs[0], seqs[2]]
    assert metrics.get("history_rows_lost", "refused_by_database") == before + 1


async def test_a_batch_is_kept_while_the_database_is_away(
    make_history: Callable[..., History], monkeypatch: pytest.MonkeyPatch
) -> None:
    history = make_history()
    await append(history, "patient", "m0")
    real = history_module._write_rows

    def away(envelopes: list[Any], hold: Any) -> None:
        raise OperationalError("database is locked")

    monkeypatch.setattr(history_module, "_write_rows", away)
    with pytest.raises(OperationalError):
        await history.flush()
    monkeypatch.setattr(history_module, "_write_rows", real)
    await history.flush()  # back: the batch that failed is written now
    assert await Message.objects.filter(room="patient").acount() == 1


async def test_a_lost_window_is_read_from_the_database_once_until_the_room_moves(
    make_history: Callable[..., History], monkeypatch: pytest.MonkeyPatch
) -> None:
    before = make_history()
    for text in ("one", "two"):
        await append(before, "cold", text)
    await before.flush()
    reads: list[str] = []
    stored_last = history_module._stored_last

    def counted(room: str, limit: int) -> Any:
        reads.append(room)
        return stored_last(room, limit)

    monkeypatch.setattr(history_module, "_stored_last", counted)
    fresh = make_history()  # a restarted Redis: no counter, no window
    # A burst of welcomes: all get the stored messages, the database is asked once.
    for _ in range(3):
        assert [m["message"] for m in await fresh.recent("cold", 50)] == ["one", "two"]
    assert reads == ["cold"]
    # A message moves the room's counter: the next welcome has it.
    await append(fresh, "cold", "three")
    assert [m["message"] for m in await fresh.recent("cold", 50)][-1] == "three"


async def test_a_resume_the_window_covers_asks_nothing_of_the_database(
    make_history: Callable[..., History], monkeypatch: pytest.MonkeyPatch
) -> None:
    history = make_history(window=3)
    for n in range(1, 6):
        await append(history, "storm", f"m{n}")
    await history.flush()
    asked: list[str] = []
    for name in ("_stored_after", "_lowest_seq"):
        real = getattr(history_module, name)

        def counted(*args: Any, _real: Any = real, _name: str = name) -> Any:
            asked.append(_name)
            return _real(*args)

        monkeypatch.setattr(history_module, name, counted)
    # The window holds 3, 4 and 5: resuming after 2, 3 or 5 is answered from it alone.
    for since, expected in ((2, ["m3", "m4", "m5"]), (3, ["m4", "m5"]), (5, [])):
        missed = await history.missed("storm", since)
        assert ([m["message"] for m in missed.messages], missed.gap) == (expected, False)
    assert asked == []
    # After 1, message 2 is only in the database: it is read from there, with no gap.
    missed = await history.missed("storm", 1)
    assert ([m["message"] for m in missed.messages], missed.gap) == (
        ["m2", "m3", "m4", "m5"],
        False,
    )
    assert sorted(set(asked)) == ["_lowest_seq", "_stored_after"]
