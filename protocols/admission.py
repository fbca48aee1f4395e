"""How many WebSocket handshakes one process works on at once, and when to ask the rest back.

A handshake's work (the session's user, the access answer, the hub's join, the welcome's reads)
waits on Redis, on the one thread Channels gives the database, and on the process's one event
loop. When thousands of browsers come back at once, after a restart, working on all of them
makes every one slow: the database thread's queue and Redis's pool run dry, handshakes fail
after the browsers gave up on them, and the browsers' retries keep the queues full. So a
process works on at most ``limit`` handshakes at a time, from the upgrade until the welcome is
out, and answers the others at once, before any layer of the WebSocket stack runs: an error
frame ``busy`` with ``retry_after`` (seconds), then close code 1013 (try again later).

``retry_after`` spreads those it refuses over time at the rate the process can finish
handshakes: ``limit`` of them at once, each taking as long as recent ones took (Little's law).
Each refusal takes the next free turn of a virtual queue, so a burst of 10,000 refused at once is
asked back over as many seconds as the process needs for them, instead of all at the same moment
again. The queue keeps no sockets, only the time of its last turn. (The rate of handshakes
finished lately would not do: while clients wait for their turns it measures the turns given.)
"""

import itertools
import random
import time
from collections.abc import Callable

from django.conf import settings

from gateway import metrics
from protocols.auth import ASGIApp, Receive, Scope, Send
from protocols.fanout import error_frame
from protocols.flatten import runs_later

FIRST_SECONDS = 0.1  # a handshake's duration assumed before any has been timed
WEIGHT = 0.05  # of each new handshake's duration in the running mean
MIN_RATE = 20.0  # handshakes a second assumed at worst
MAX_RETRY_SECONDS = 30.0  # no client is asked to wait longer than this


class HandshakeGate:
    """Handshakes in flight in this process, and the turns of those refused."""

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, seed: int | None = None
    ) -> None:
        self._clock = clock
        self._random = random.Random(seed)  # noqa: S311 (spreading retries, not secrets)
        self._limit = 1
        self._started: dict[int, float] = {}  # in flight: ticket -> when it started
        self._started_sum = 0.0  # of those start times, for their mean age
        self._tickets = itertools.count()
        self._seconds = FIRST_SECONDS  # running mean of a welcomed handshake's duration
        self._last_turn = 0.0  # the latest time a refused client was asked to come back at

    @property
    def in_flight(self) -> int:
        return len(self._started)

    def enter(self, limit: int) -> int | None:
        """Take a place for a handshake: a ticket, to give back to `leave`; None when
        ``limit`` are in flight already."""
        self._limit = limit
        if len(self._started) >= limit:
            return None
        ticket = next(self._tickets)
        now = self._clock()
        self._started[ticket] = now
        self._started_sum += now
        return ticket

    def leave(self, ticket: int, *, welcomed: bool) -> None:
        """Give the place of ``ticket`` back; ``welcomed``: the handshake ended with a welcome
        (a refusal's duration says nothing of the work a welcome takes)."""
        started = self._started.pop(ticket, None)
        if started is None:
            return
        self._started_sum = self._started_sum - started if self._started else 0.0
        if welcomed:
            took = max(0.0, self._clock() - started)
            self._seconds += WEIGHT * (took - self._seconds)

    def rate(self) -> float:
        """Handshakes a second the process can finish: ``limit`` at a time, each taking as long
        as recent ones did, or as those in flight have on average so far, when that is longer
        (they may be stuck: then none finishes to say so) (at least `MIN_RATE`)."""
        seconds = self._seconds
        if self._started:
            mean_age = self._clock() - self._started_sum / len(self._started)
            seconds = max(seconds, mean_age)
        return max(MIN_RATE, self._limit / max(seconds, 1e-3))

    def retry_after(self) -> float:
        """Seconds a refused client should wait: the next free turn at that rate, or, past
        `MAX_RETRY_SECONDS` of turns given, a random time within its last three quarters (the
        rate is then most likely low for a moment: while a flood of handshakes is turned away,
        those let in move slowly)."""
        now = self._clock()
        turn = max(now, self._last_turn) + 1.0 / self.rate()
        if turn - now > MAX_RETRY_SECONDS:
            return round(self._random.uniform(MAX_RETRY_SECONDS / 4, MAX_RETRY_SECONDS), 2)
        self._last_turn = turn
        return round(turn - now, 2)


handshakes = HandshakeGate()  # this process's

SCOPE_KEY = "gateway_admission"  # the socket's `Admission`, in its scope
CLOSE_BUSY = 1013  # try again later


class Admission:
    """A socket's place among the handshakes in flight, given back once."""

    __slots__ = ("ticket",)

    def __init__(self, ticket: int | None) -> None:
        self.ticket = ticket

    def done(self, *, welcomed: bool) -> None:
        """The handshake is over: ``welcomed``, or refused or failed."""
        if self.ticket is not None:
            handshakes.leave(self.ticket, welcomed=welcomed)
            self.ticket = None


def admission_of(scope: Scope) -> Admission:
    """The socket's place (a placeholder outside `HandshakeAdmission`, as in unit tests)."""
    found = scope.get(SCOPE_KEY)
    return found if isinstance(found, Admission) else Admission(None)


class HandshakeAdmission:
    """The WebSocket stack's first layer: a place for the handshake, or ``busy`` at once.

    The place travels in the scope to the consumer, which gives it back once its welcome is out
    (or it refused the socket). When a layer answers the socket itself (an Origin refused), no
    consumer runs, and the place is given back here.
    """

    def __init__(self, inner: ASGIApp) -> None:
        self.inner = inner

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        ticket = handshakes.enter(settings.WS_HANDSHAKES)
        if ticket is None:
            await refuse_busy(receive, send)
            return
        admission = Admission(ticket)
        try:
            await self.inner({**scope, SCOPE_KEY: admission}, receive, send)
        finally:
            if not runs_later():
                admission.done(welcomed=False)


async def refuse_busy(receive: Receive, send: Send) -> None:
    """Tell a handshake to come back at its turn: accepted only to say so."""
    message = await receive()
    if message.get("type") != "websocket.connect":
        return
    metrics.inc("ws_refused", "busy")
    metrics.inc("ws_errors", "busy")
    detail = "the gateway is busy with other handshakes: come back after retry_after seconds"
    frame = error_frame("busy", detail, retry_after=handshakes.retry_after())
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.send", "text": frame})
    await send({"type": "websocket.close", "code": CLOSE_BUSY})
