"""Handshakes in flight, and the turns a busy process gives the ones it refuses."""

import json
from typing import Any

import pytest

from protocols.admission import (
    MAX_RETRY_SECONDS,
    MIN_RATE,
    HandshakeAdmission,
    HandshakeGate,
    admission_of,
    handshakes,
)
from protocols.flatten import Flattened, deferred


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_process_works_on_at_most_its_limit_and_a_place_given_back_is_free_again() -> None:
    gate = HandshakeGate(Clock())
    tickets = [gate.enter(3) for _ in range(3)]
    assert None not in tickets
    assert gate.enter(3) is None
    gate.leave(tickets[0], welcomed=True)
    assert gate.enter(3) is not None
    assert gate.in_flight == 3


def test_refused_clients_are_asked_back_one_turn_apart_at_the_rate_handshakes_take() -> None:
    clock = Clock()
    gate = HandshakeGate(clock)
    for _ in range(20):  # handshakes of 0.5 s, 10 at a time: 20 a second
        ticket = gate.enter(10)
        assert ticket is not None
        clock.now += 0.5
        gate.leave(ticket, welcomed=True)
    turns = [gate.retry_after() for _ in range(100)]
    # One turn every 1/rate seconds, in order: the burst comes back spread, not at once.
    assert turns == sorted(turns)
    assert turns[0] > 0
    assert turns[-1] - turns[0] >= 99 / gate.rate() - 0.2
    assert gate.rate() < 10 / 0.1  # slower than the first guess: it learned


def test_a_stuck_handshake_slows_the_turns_down_before_any_finishes() -> None:
    clock = Clock()
    gate = HandshakeGate(clock)
    ticket = gate.enter(1000)
    assert ticket is not None
    fast = gate.rate()
    clock.now += 30  # the one in flight has taken 30 s so far
    assert gate.rate() == pytest.approx(1000 / 30)
    assert gate.rate() < fast
    assert gate.enter(1000) is not None  # a new one halves the mean age
    assert gate.rate() == pytest.approx(1000 / 15)


def test_no_client_is_asked_to_wait_longer_than_the_bound() -> None:
    clock = Clock()
    gate = HandshakeGate(clock, seed=1)
    gate.enter(1)
    clock.now += 1000  # stuck: the slowest rate
    waits = [gate.retry_after() for _ in range(5000)]
    assert max(waits) <= MAX_RETRY_SECONDS
    # Past the bound, turns are spread over most of it rather than all given the bound.
    late = waits[int(MAX_RETRY_SECONDS * MIN_RATE) + 10 :]
    assert min(late) >= MAX_RETRY_SECONDS / 4
    assert len(set(late)) > 100


def test_a_refusal_does_not_count_as_a_handshake_timed() -> None:
    clock = Clock()
    gate = HandshakeGate(clock)
    ticket = gate.enter(10)
    assert ticket is not None
    before = gate.rate()
    clock.now += 20
    assert gate.rate() < before  # while it is in flight, its age counts
    gate.leave(ticket, welcomed=False)
    assert gate.rate() == before


# The middleware: a place per handshake, given back on every path.


def scripted(*messages: dict[str, Any]) -> tuple[Any, list[dict[str, Any]]]:
    """A ``receive`` that hands out ``messages``, and the list a ``send`` fills."""
    queue = list(messages)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return queue.pop(0) if queue else {"type": "websocket.disconnect", "code": 1000}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    return (receive, send), sent


CONNECT = {"type": "websocket.connect"}


async def test_a_place_comes_back_when_a_layer_answers_the_socket_itself(settings: Any) -> None:
    settings.WS_HANDSHAKES = 1

    async def origin_refused(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.close"})

    (receive, send), sent = scripted(CONNECT)
    await Flattened(HandshakeAdmission(origin_refused))({"type": "websocket"}, receive, send)
    assert sent == [{"type": "websocket.close"}]
    assert handshakes.in_flight == 0


async def test_the_consumer_gives_the_place_back_and_a_busy_process_answers_at_once(
    settings: Any,
) -> None:
    settings.WS_HANDSHAKES = 1
    seen: list[int] = []
    others: list[list[dict[str, Any]]] = []

    async def consumer(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(handshakes.in_flight)
        # While this one holds the only place, the next is told to come back.
        (other_receive, other_send), other_sent = scripted(CONNECT)
        await stack({"type": "websocket"}, other_receive, other_send)
        others.append(other_sent)
        admission_of(scope).done(welcomed=True)
        seen.append(handshakes.in_flight)

    stack = Flattened(HandshakeAdmission(deferred(consumer)))
    (receive, send), _ = scripted(CONNECT)
    await stack({"type": "websocket"}, receive, send)
    assert seen == [1, 0]
    accept, frame, close = others[0]
    assert accept == {"type": "websocket.accept"}
    busy = json.loads(frame["text"])
    assert (busy["type"], busy["code"]) == ("error", "busy")
    assert 0 <= busy["retry_after"] <= MAX_RETRY_SECONDS
    assert close == {"type": "websocket.close", "code": 1013}
