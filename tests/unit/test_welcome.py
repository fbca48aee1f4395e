"""The welcome frame stays within its bytes: the oldest messages and states give way, and the
frame says so (``gap``, ``retained_gap``), so a client never loses a message silently."""

import json
from typing import Any

from protocols.consumers.room import welcome_frame

LIMIT = 4096


def message(seq: int, size: int = 100) -> dict[str, Any]:
    return {
        "type": "message",
        "seq": seq,
        "message": "x" * size,
        "ts": f"2026-12-01T00:00:{seq:02d}Z",
    }


def state(n: int, size: int = 100) -> dict[str, Any]:
    return {
        "type": "message",
        "topic": f"rooms/r/s{n}",
        "ts": f"2026-12-01T00:00:{n:02d}Z",
        "message": "y" * size,
        "retained": True,
    }


def build(
    messages: list[dict[str, Any]], states: list[dict[str, Any]], **extra: Any
) -> dict[str, Any]:
    text = welcome_frame(
        "r",
        seq=max((m["seq"] for m in messages), default=0),
        gap=False,
        messages=messages,
        states=states,
        presence=[{"key": "ws:1"}],
        limit=LIMIT,
        **extra,
    )
    assert len(text.encode()) <= LIMIT
    frame: dict[str, Any] = json.loads(text)
    return frame


def test_a_welcome_that_fits_is_sent_whole() -> None:
    frame = build([message(1), message(2)], [state(1)])
    assert [m["seq"] for m in frame["messages"]] == [1, 2]
    assert frame["gap"] is False
    assert "retained_gap" not in frame


def test_the_oldest_messages_give_way_first_and_gap_says_so() -> None:
    messages = [message(seq, 300) for seq in range(1, 41)]  # ~13 KB: over the limit
    frame = build(messages, [state(1)])
    seqs = [m["seq"] for m in frame["messages"]]
    assert seqs == list(range(41 - len(seqs), 41))  # the newest, in order, none skipped
    assert 0 < len(seqs) < 40
    assert frame["gap"] is True
    assert frame["seq"] == 40  # resume continues after the newest
    assert len(frame["retained"]) == 1
    assert "retained_gap" not in frame


def test_states_beyond_the_limit_leave_the_least_recently_updated_out() -> None:
    states = [state(n, 600) for n in range(1, 21)]  # ~13 KB of state alone
    frame = build([message(1)], states)
    kept = [int(s["topic"].rsplit("s", 1)[1]) for s in frame["retained"]]
    assert kept == list(range(21 - len(kept), 21))  # the newest states, in their order
    assert len(kept) < 20
    assert frame["retained_gap"] is True
    assert [m["seq"] for m in frame["messages"]] == [1]  # the small message still fitted
    assert frame["gap"] is False


def test_a_single_message_larger_than_the_limit_is_left_out_not_cut() -> None:
    frame = build([message(1, 10), message(2, LIMIT * 2)], [])
    assert [m["seq"] for m in frame["messages"]] == []  # the newest does not fit: none after it
    assert frame["gap"] is True
