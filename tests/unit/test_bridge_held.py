"""How the bridge hands on what waited for a Redis shard: in order, in batches of room
messages, a presence or state change alone (pure logic)."""

from collections import deque

from bridges.bridge import HELD_BATCH, _Call, _Held, _Hold, _next_held
from bridges.client import Incoming
from gateway.publish import Entry


async def nothing() -> None:
    return None


def entry(n: int) -> Entry:
    return Entry(room="yard", message={"n": n}, source="mqtt", sender="d")


def held(*steps: Entry | _Call) -> deque[_Held]:
    incoming = Incoming("rooms/yard/d", b"{}", 1, 1, False, False, None, None)
    return deque(_Held(step, _Hold(incoming), []) for step in steps)


def test_room_messages_go_together_up_to_the_next_change() -> None:
    change = _Call("yard", nothing)
    queue = held(entry(1), entry(2), change, entry(3))
    assert [getattr(s, "message", None) for s in _next_held(queue)] == [{"n": 1}, {"n": 2}]
    queue.popleft()
    queue.popleft()
    assert _next_held(queue) == [change]  # alone: it is run, not published
    queue.popleft()
    assert [getattr(s, "message", None) for s in _next_held(queue)] == [{"n": 3}]


def test_a_long_wait_is_handed_on_in_batches() -> None:
    queue = held(*(entry(n) for n in range(HELD_BATCH + 10)))
    batch = _next_held(queue)
    assert len(batch) == HELD_BATCH
    assert batch[0] is queue[0].step
