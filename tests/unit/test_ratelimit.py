"""Rate limits on an injected clock, and the abuse-limit settings read at start-up."""

from typing import Any

import pytest

from gateway.ratelimit import FloodGuard, RateLimit, TokenBucket
from tests.support.processes import gateway_env, manage


class Clock:
    """A clock that moves only when told to."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def takes(bucket: TokenBucket, count: int) -> list[bool]:
    return [bucket.take() for _ in range(count)]


def test_a_full_bucket_allows_a_burst_then_refuses() -> None:
    bucket = TokenBucket(RateLimit(rate=1.0, burst=5), clock=Clock())
    assert takes(bucket, 7) == [True] * 5 + [False] * 2


def test_the_bucket_refills_at_the_rate() -> None:
    clock = Clock()
    bucket = TokenBucket(RateLimit(rate=10.0, burst=3), clock=clock)
    assert takes(bucket, 4) == [True, True, True, False]
    clock.now += 0.05  # half a token
    assert not bucket.take()
    clock.now += 0.05  # the other half
    assert takes(bucket, 2) == [True, False]
    clock.now += 0.2  # two tokens
    assert takes(bucket, 3) == [True, True, False]


def test_the_bucket_never_holds_more_than_the_burst() -> None:
    clock = Clock()
    bucket = TokenBucket(RateLimit(rate=100.0, burst=4), clock=clock)
    takes(bucket, 4)
    clock.now += 3600
    assert takes(bucket, 6) == [True] * 4 + [False] * 2


def test_a_steady_sender_at_the_rate_is_always_allowed() -> None:
    clock = Clock(now=0.1)  # not a round number: sums of 0.1 are inexact in binary
    bucket = TokenBucket(RateLimit(rate=10.0, burst=1), clock=clock)
    for _ in range(1000):
        assert bucket.take()
        clock.now += 0.1


def test_now_can_be_passed_instead_of_a_clock() -> None:
    bucket = TokenBucket(RateLimit(rate=2.0, burst=1), clock=Clock(now=0.0))
    assert bucket.take(now=0.0)
    assert not bucket.take(now=0.25)
    assert bucket.take(now=0.5)
    assert not bucket.take(now=0.5)


def test_a_clock_going_back_refills_nothing() -> None:
    bucket = TokenBucket(RateLimit(rate=1.0, burst=1), clock=Clock(now=10.0))
    assert bucket.take(now=10.0)
    assert not bucket.take(now=5.0)
    assert not bucket.take(now=10.5)  # the half second is counted from 10, not from 5
    assert bucket.take(now=11.0)


@pytest.mark.parametrize(("rate", "burst"), [(0.0, 1), (-1.0, 1), (float("nan"), 1), (1.0, 0)])
def test_a_limit_must_allow_something(rate: float, burst: int) -> None:
    with pytest.raises(ValueError, match=r"rate|burst"):
        RateLimit(rate=rate, burst=burst)


def test_flood_guard_warns_then_closes() -> None:
    clock = Clock()
    guard = FloodGuard(TokenBucket(RateLimit(rate=1.0, burst=2), clock=clock), warnings=3)
    verdicts = [guard.check() for _ in range(8)]
    assert verdicts == ["ok", "ok", "warn", "warn", "warn", "close", "close", "close"]


def test_an_allowed_frame_resets_the_warnings() -> None:
    clock = Clock()
    guard = FloodGuard(TokenBucket(RateLimit(rate=1.0, burst=1), clock=clock), warnings=2)
    assert [guard.check() for _ in range(3)] == ["ok", "warn", "warn"]
    clock.now += 1.0
    assert [guard.check() for _ in range(4)] == ["ok", "warn", "warn", "close"]


def test_flood_guard_warns_five_times_by_default() -> None:
    guard = FloodGuard(TokenBucket(RateLimit(rate=1.0, burst=1), clock=Clock()))
    assert [guard.check() for _ in range(7)] == ["ok"] + ["warn"] * 5 + ["close"]


def test_flood_guard_takes_now_too() -> None:
    guard = FloodGuard(TokenBucket(RateLimit(rate=1.0, burst=1), clock=Clock(now=0.0)), warnings=0)
    assert [guard.check(now=0.0), guard.check(now=0.5), guard.check(now=1.0)] == [
        "ok",
        "close",
        "ok",
    ]


def test_the_websocket_limit_comes_from_the_settings(settings: Any) -> None:
    settings.WS_RATE, settings.WS_BURST = 2.0, 3
    assert RateLimit.for_websocket() == RateLimit(rate=2.0, burst=3)
    guard = FloodGuard.for_websocket(clock=Clock())
    assert [guard.check() for _ in range(4)] == ["ok", "ok", "ok", "warn"]


# The settings, read by a fresh process


def check(**env: str) -> Any:
    return manage("check", env=gateway_env(**{"DJANGO_DEBUG": "0", **env}))


def test_limits_at_the_edges_of_their_ranges_start() -> None:
    result = check(GATEWAY_WS_RATE="0.1", GATEWAY_WS_BURST="100000", GATEWAY_WS_MAX_PER_USER="1")
    assert result.returncode == 0, result.stderr


def test_any_host_is_allowed_in_debug_only() -> None:
    result = check(DJANGO_DEBUG="1", DJANGO_ALLOWED_HOSTS="*")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("hosts", ["*", "gateway.example,*"])
def test_any_host_is_refused_in_production(hosts: str) -> None:
    result = check(DJANGO_ALLOWED_HOSTS=hosts)
    assert result.returncode != 0
    assert "DJANGO_ALLOWED_HOSTS='*' is refused in production" in result.stderr


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("GATEWAY_WS_RATE", "0.09"),
        ("GATEWAY_WS_RATE", "10000.5"),
        ("GATEWAY_WS_RATE", "nan"),
        ("GATEWAY_WS_RATE", "fast"),
        ("GATEWAY_WS_BURST", "0"),
        ("GATEWAY_WS_BURST", "100001"),
        ("GATEWAY_WS_MAX_PER_USER", "0"),
        ("GATEWAY_WS_MAX_PER_USER", "100001"),
        ("GATEWAY_WS_MAX_PER_USER", "1.5"),
    ],
)
def test_a_limit_out_of_range_fails_naming_it(name: str, value: str) -> None:
    result = check(**{name: value})
    assert result.returncode != 0
    assert f": {name}" in result.stderr  # the error starts with the variable's name
