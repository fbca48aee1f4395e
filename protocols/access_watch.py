"""One loop per process that checks every open socket's credentials and room access again.

Every ``ACCESS_RECHECK_SECONDS`` the loop asks each registered socket to re-check itself, with
answers shared across the sockets of one round: sockets of one user (or anonymous ones) in one
room cost one access query, sockets on one token or session one credentials query. A room of
10,000 anonymous viewers costs one query per interval, and no socket holds a task of its own.
"""

import asyncio
import logging
from collections.abc import Hashable
from typing import Any, Protocol

from django.conf import settings

logger = logging.getLogger(__name__)


class Watched(Protocol):
    async def recheck(self, answers: dict[Hashable, Any]) -> None:
        """Check again, reusing and adding to ``answers`` (shared by one round)."""
        ...


class AccessWatch:
    """The sockets of this process to check again, and the loop that does it."""

    def __init__(self) -> None:
        self._sockets: dict[Watched, None] = {}
        self._task: asyncio.Task[None] | None = None

    def add(self, socket: Watched) -> None:
        self._sockets[socket] = None
        task = self._task
        # (A loop that ended, as between tests, leaves its task undone: start one anew.)
        if task is None or task.done() or task.get_loop() is not asyncio.get_running_loop():
            self._task = asyncio.create_task(self._run(), name="access-watch")

    def discard(self, socket: Watched) -> None:
        self._sockets.pop(socket, None)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(settings.ACCESS_RECHECK_SECONDS)
            await self.check_all()

    async def check_all(self) -> None:
        """One round: every socket registered now, each answer asked once."""
        answers: dict[Hashable, Any] = {}
        for socket in list(self._sockets):
            if socket not in self._sockets:
                continue  # gone meanwhile
            try:
                await socket.recheck(answers)
            except Exception:
                logger.exception("checking a socket's credentials or access failed; next round")


access_watch = AccessWatch()
