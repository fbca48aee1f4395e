"""The process-wide re-check of open sockets: one round asks each question once."""

from collections.abc import Hashable
from typing import Any

from protocols.access_watch import AccessWatch


class Socket:
    def __init__(self, room: str, calls: list[str], *, broken: bool = False) -> None:
        self.room, self.calls, self.broken = room, calls, broken
        self.checked = 0

    async def recheck(self, answers: dict[Hashable, Any]) -> None:
        self.checked += 1
        if self.broken:
            raise RuntimeError("the database went away")
        if self.room not in answers:
            self.calls.append(self.room)
            answers[self.room] = "read"


async def test_a_round_checks_every_socket_and_asks_once_per_room() -> None:
    watch, calls = AccessWatch(), []
    sockets = [Socket("hall", calls) for _ in range(1000)] + [Socket("den", calls)]
    broken = Socket("hall", calls, broken=True)
    for socket in [broken, *sockets]:
        watch.add(socket)
    await watch.check_all()
    assert sorted(calls) == ["den", "hall"]
    assert all(socket.checked == 1 for socket in [broken, *sockets])
    watch.discard(sockets[0])
    await watch.check_all()
    assert sockets[0].checked == 1  # gone: not checked again
    assert sockets[1].checked == 2
