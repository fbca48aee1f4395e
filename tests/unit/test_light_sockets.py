"""What keeps an idle socket small: the event inbox, the flattened middleware stack, the
socket's attributes in slots, and autobahn's send queue held only while it holds something."""

import asyncio
import tracemalloc
from typing import Any

import pytest
from daphne.ws_protocol import WebSocketFactory

from protocols.compat import (
    GatewaySocket,
    Inbox,
    SendQueue,
    configure_websockets,
    learn_attributes,
)
from protocols.flatten import Flattened, deferred


async def test_the_inbox_hands_events_over_in_order_and_waits_for_more() -> None:
    inbox = Inbox()
    for n in range(3):
        inbox.put_nowait({"n": n})
    assert [(await inbox.get())["n"] for _ in range(3)] == [0, 1, 2]
    waiting = asyncio.create_task(inbox.get())
    await asyncio.sleep(0)
    assert not waiting.done()
    inbox.put_nowait({"n": 3})
    assert (await asyncio.wait_for(waiting, 1))["n"] == 3
    assert inbox.qsize() == 0


async def test_a_getter_cancelled_after_its_wake_up_loses_no_event() -> None:
    inbox = Inbox()
    first = asyncio.create_task(inbox.get())
    second = asyncio.create_task(inbox.get())
    await asyncio.sleep(0)
    inbox.put_nowait("only")  # wakes the first getter...
    first.cancel()  # ...which is cancelled before it runs: the event passes to the second
    assert await asyncio.wait_for(second, 1) == "only"
    with pytest.raises(asyncio.CancelledError):
        await first


async def test_two_getters_each_receive_one_event() -> None:
    inbox = Inbox()
    getters = [asyncio.create_task(inbox.get()) for _ in range(2)]
    await asyncio.sleep(0)
    inbox.put_nowait("a")
    inbox.put_nowait("b")
    assert sorted(await asyncio.wait_for(asyncio.gather(*getters), 1)) == ["a", "b"]


def _layer(name: str, events: list[str], inner: Any) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        events.append(f"{name} in")
        await inner({**scope, name: True}, receive, send)
        events.append(f"{name} out")

    return app


async def test_the_layers_resolve_the_scope_and_return_before_the_socket_runs() -> None:
    events: list[str] = []
    seen: list[dict[str, Any]] = []

    async def consumer(scope: dict[str, Any], receive: Any, send: Any) -> None:
        events.append("consumer")
        seen.append(scope)
        await send(await receive())

    sent: list[Any] = []

    async def receive() -> str:
        return "hello"

    async def send(message: Any) -> None:
        sent.append(message)

    stack = _layer("origin", events, _layer("auth", events, deferred(consumer)))
    await Flattened(stack)({"type": "websocket"}, receive, send)
    assert events == ["origin in", "auth in", "auth out", "origin out", "consumer"]
    assert seen == [{"type": "websocket", "origin": True, "auth": True}]
    assert sent == ["hello"]


async def test_a_stack_that_refuses_runs_no_consumer_and_errors_reach_the_server() -> None:
    ran: list[str] = []

    async def consumer(scope: dict[str, Any], receive: Any, send: Any) -> None:
        ran.append("consumer")
        raise RuntimeError("the consumer failed")

    async def refusing(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "websocket.close"})  # as the Origin check denies

    async def nothing() -> dict[str, Any]:
        return {}

    async def drop(message: Any) -> None:
        pass

    await Flattened(refusing)({"type": "websocket"}, nothing, drop)
    assert ran == []
    with pytest.raises(RuntimeError, match="the consumer failed"):
        await Flattened(deferred(consumer))({"type": "websocket"}, nothing, drop)
    with pytest.raises(RuntimeError, match="the consumer failed"):  # outside Flattened: inline
        await deferred(consumer)({"type": "websocket"}, nothing, drop)
    assert ran == ["consumer", "consumer"]


def test_the_send_queue_hands_writes_over_in_order_and_empties() -> None:
    queue = SendQueue()
    assert len(queue) == 0
    queue.append((b"a", True))
    queue.append((b"b", False))
    assert len(queue) == 2
    assert [queue.popleft(), queue.popleft()] == [(b"a", True), (b"b", False)]
    assert len(queue) == 0
    with pytest.raises(IndexError):  # as a deque does
        queue.popleft()


def test_an_open_socket_holds_its_attributes_in_slots_and_keeps_the_class_defaults() -> None:
    factory = WebSocketFactory(None, server="daphne")
    configure_websockets(factory)
    socket = factory.protocol()
    assert socket.peer is GatewaySocket.peer  # a class default, not hidden by a slot
    assert not hasattr(socket, "handshake_deferred")  # as daphne asks before it is set
    socket.handshake_deferred = "waiting"
    socket.state, socket.clean_headers = socket.STATE_OPEN, [(b"host", b"example")]
    del socket.handshake_deferred
    assert not hasattr(socket, "handshake_deferred")
    assert socket.clean_headers == [(b"host", b"example")]
    assert not {"state", "clean_headers"} & set(vars(socket))  # not in a dict of its own


def _late_attribute_bytes(cls: type) -> float:
    """Bytes per instance that setting two attributes first set late allocates, after a burst
    of 100 instances was made."""
    made = [cls() for _ in range(100)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for instance in made:
            instance.late = instance.later = 1
        return (tracemalloc.get_traced_memory()[0] - before) / len(made)
    finally:
        tracemalloc.stop()


def test_attributes_learned_before_a_burst_take_no_dict_per_instance() -> None:
    class Unlearned:
        def __init__(self) -> None:
            self.early = 0

    class Learned(Unlearned):
        pass

    if _late_attribute_bytes(Unlearned) < 16:
        pytest.skip("this Python shares late attribute names among instances anyway")
    learn_attributes(Learned, ("early", "late", "later"))
    assert _late_attribute_bytes(Learned) < 16
