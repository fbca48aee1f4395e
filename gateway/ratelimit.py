"""Rate limits for what clients send: a token bucket, and a flood guard built on it.

Both are pure and single-threaded (one per socket, used from its own task); time comes from
``time.monotonic`` unless a clock, or ``now``, is given, so tests never sleep.
"""

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from django.conf import settings

Verdict = Literal["ok", "warn", "close"]

# Refilling adds rate * elapsed, which floating point may land a hair under a whole token.
_EPSILON = 1e-9


@dataclass(frozen=True, slots=True)
class RateLimit:
    """``rate`` events per second on average, and up to ``burst`` at once."""

    rate: float
    burst: int

    def __post_init__(self) -> None:
        if not self.rate > 0:  # also refuses NaN
            raise ValueError(f"rate must be positive, not {self.rate}")
        if self.burst < 1:
            raise ValueError(f"burst must be at least 1, not {self.burst}")

    @classmethod
    def for_websocket(cls) -> "RateLimit":
        """The frame limit of one WebSocket (``GATEWAY_WS_RATE``, ``GATEWAY_WS_BURST``)."""
        return cls(rate=settings.WS_RATE, burst=settings.WS_BURST)


class TokenBucket:
    """Allows ``limit.burst`` events at once, then ``limit.rate`` per second; starts full."""

    __slots__ = ("_clock", "_last", "_tokens", "limit")

    def __init__(self, limit: RateLimit, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self._clock = clock
        self._tokens = float(limit.burst)
        self._last = clock()

    @property
    def tokens(self) -> float:
        """Tokens left as of the last `take` (not refilled to now)."""
        return self._tokens

    def take(self, now: float | None = None) -> bool:
        """Take one token if there is one; ``now`` defaults to the clock."""
        now = self._clock() if now is None else now
        # A clock that goes back (an injected one) refills nothing rather than draining.
        elapsed = max(0.0, now - self._last)
        self._last = max(self._last, now)
        self._tokens = min(float(self.limit.burst), self._tokens + elapsed * self.limit.rate)
        if self._tokens + _EPSILON >= 1.0:
            self._tokens = max(0.0, self._tokens - 1.0)
            return True
        return False


class FloodGuard:
    """A bucket that tells a socket what to do about a client that keeps sending too fast.

    `check` returns ``"ok"`` for an allowed event, ``"warn"`` for each of the first ``warnings``
    refusals in a row (answer with an error, drop the frame) and ``"close"`` after that. An
    allowed event resets the count.
    """

    __slots__ = ("bucket", "refusals", "warnings")

    def __init__(self, bucket: TokenBucket, *, warnings: int = 5) -> None:
        if warnings < 0:
            raise ValueError(f"warnings must be 0 or more, not {warnings}")
        self.bucket = bucket
        self.warnings = warnings
        self.refusals = 0

    @classmethod
    def for_websocket(cls, *, clock: Callable[[], float] = time.monotonic) -> "FloodGuard":
        """A guard with the WebSocket frame limit of the settings."""
        return cls(TokenBucket(RateLimit.for_websocket(), clock=clock))

    def check(self, now: float | None = None) -> Verdict:
        """Count one event and say whether it is allowed, to be warned about, or too many."""
        if self.bucket.take(now):
            self.refusals = 0
            return "ok"
        self.refusals += 1
        return "warn" if self.refusals <= self.warnings else "close"


class BucketsByKey:
    """A `TokenBucket` per key (a client address, say), for at most ``keys`` keys: the least
    recently seen are forgotten first, so a stranger with many addresses cannot grow it."""

    def __init__(
        self, limit: RateLimit, *, keys: int = 10_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit = limit
        self.keys = keys
        self._clock = clock
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def take(self, key: str, now: float | None = None) -> bool:
        """Take a token from ``key``'s bucket (a new key starts full)."""
        bucket = self._buckets.pop(key, None) or TokenBucket(self.limit, clock=self._clock)
        self._buckets[key] = bucket
        if len(self._buckets) > self.keys:
            self._buckets.popitem(last=False)
        return bucket.take(now)

    def __len__(self) -> int:
        return len(self._buckets)
