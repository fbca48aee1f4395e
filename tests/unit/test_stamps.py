"""Answers kept while their stamp stands: the cache behind DB-free handshakes."""

import asyncio

import pytest

from gateway import stamps
from gateway.stamps import Stamped


def test_an_answer_holds_while_its_stamp_is_unchanged() -> None:
    cache: Stamped[str] = Stamped(max_entries=10, max_age=60)
    cache.put("room", "s1", "write")
    assert cache.get("room", "s1") == (True, "write")
    assert cache.get("room", "s2") == (False, None)  # moved: asked again
    assert cache.get("room", "s1") == (False, None)  # and the stale answer is gone


def test_an_answer_is_kept_for_at_most_its_age(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr(stamps.time, "monotonic", lambda: now[0])
    cache: Stamped[str] = Stamped(max_entries=10, max_age=5)
    cache.put("room", None, "read")
    now[0] += 5
    assert cache.get("room", None) == (True, "read")
    now[0] += 0.1
    assert cache.get("room", None) == (False, None)


def test_the_least_recently_used_go_first_past_the_bounds() -> None:
    cache: Stamped[int] = Stamped(max_entries=2, max_age=60)
    cache.put("a", 1, 1)
    cache.put("b", 1, 2)
    assert cache.get("a", 1) == (True, 1)  # "a" is now the most recent
    cache.put("c", 1, 3)
    assert [cache.get(k, 1)[0] for k in "abc"] == [True, False, True]


def test_answers_are_kept_within_their_cost() -> None:
    cache: Stamped[int] = Stamped(max_entries=100, max_age=60, max_cost=100)
    for n, key in enumerate("abcd"):
        cache.put(key, 1, n, cost=25)
    assert all(cache.get(k, 1)[0] for k in "abcd")
    cache.put("e", 1, 4, cost=25)  # 125 of 100: the least recent goes
    assert [cache.get(k, 1)[0] for k in "abcde"] == [False, True, True, True, True]
    cache.put("huge", 1, 5, cost=26)  # over a quarter of the bound: not kept at all
    assert cache.get("huge", 1) == (False, None)
    assert all(cache.get(k, 1)[0] for k in "bcde")


def test_forget_all_empties_every_cache() -> None:
    first: Stamped[int] = Stamped(max_entries=5, max_age=60)
    second: Stamped[int] = Stamped(max_entries=5, max_age=60)
    first.put("k", None, 1)
    second.put("k", None, 2)
    stamps.forget_all()
    assert first.get("k", None) == second.get("k", None) == (False, None)


async def test_a_stamp_moves_to_a_value_it_never_had(settings: object) -> None:
    setattr(settings, "REDIS_URL", None)  # noqa: B010 - the process's own stamps
    seen = {await stamps.read("some-room-state")}
    for _ in range(5):
        await stamps.bump("some-room-state")
        seen.add(await stamps.read("some-room-state"))
    assert len(seen) == 6


async def test_callers_that_miss_together_share_one_load() -> None:
    cache: Stamped[str] = Stamped(max_entries=10, max_age=60)
    loads: list[str] = []
    release = asyncio.Event()

    async def load() -> tuple[str, int]:
        loads.append("room")
        await release.wait()
        return "write", 1

    waiting = [asyncio.create_task(cache.answer("room", "s1", load)) for _ in range(10)]
    await asyncio.sleep(0)
    release.set()
    assert await asyncio.gather(*waiting) == ["write"] * 10
    assert loads == ["room"]
    assert await cache.answer("room", "s2", load) == "write"  # a new stamp loads again
    assert loads == ["room", "room"]


async def test_a_failed_load_reaches_every_caller_and_is_not_kept() -> None:
    cache: Stamped[str] = Stamped(max_entries=10, max_age=60)
    attempts: list[int] = []

    async def load() -> tuple[str, int]:
        attempts.append(1)
        await asyncio.sleep(0)
        if len(attempts) == 1:
            raise ConnectionError("database away")
        return "read", 1

    results = await asyncio.gather(
        *(cache.answer("room", None, load) for _ in range(3)), return_exceptions=True
    )
    assert [type(r) for r in results] == [ConnectionError] * 3
    assert await cache.answer("room", None, load) == "read"
    assert len(attempts) == 2
