"""How rooms spread over Redis shards (`gateway.shared.shard_of`): pure logic."""

from collections import Counter

import pytest

from gateway.shared import parse_shards, shard_of, split_by_shard

ROOMS = [f"room-{i}" for i in range(4000)]


def test_a_room_always_lands_on_the_same_shard_whatever_order_the_shards_are_named_in() -> None:
    names = ("main", "b", "c")
    reordered = ("c", "main", "b")
    for room in ROOMS[:500]:
        assert names[shard_of(room, names)] == reordered[shard_of(room, reordered)]


def test_rooms_spread_evenly_over_the_shards() -> None:
    names = ("main", "b", "c", "d")
    spread = Counter(shard_of(room, names) for room in ROOMS)
    assert set(spread) == {0, 1, 2, 3}
    for count in spread.values():  # 1000 each, give or take what 4000 draws vary by
        assert 850 <= count <= 1150, spread


def test_adding_a_shard_moves_only_the_rooms_it_takes() -> None:
    before, after = ("main", "b"), ("main", "b", "c")
    moved = [r for r in ROOMS if before[shard_of(r, before)] != after[shard_of(r, after)]]
    assert all(after[shard_of(r, after)] == "c" for r in moved)  # none between main and b
    assert 0.28 < len(moved) / len(ROOMS) < 0.39  # about a third: the new shard's share


def test_one_shard_holds_every_room() -> None:
    assert {shard_of(room, ("main",)) for room in ROOMS[:100]} == {0}


def test_items_split_by_shard_keep_their_order() -> None:
    names = ("main", "b")
    items = [(room, i) for i, room in enumerate(ROOMS[:50])]
    by_shard = split_by_shard(items, lambda item: item[0], names)
    assert sorted(i for some in by_shard.values() for _, i in some) == list(range(50))
    for shard, some in by_shard.items():
        assert [i for _, i in some] == sorted(i for _, i in some)
        assert {shard_of(room, names) for room, _ in some} == {shard}


def test_shards_parse_by_name() -> None:
    assert parse_shards(" b=redis://h2:6379/0 , c-2=rediss://:pw@h3/1", sentinels=False) == (
        ("b", "redis://h2:6379/0"),
        ("c-2", "rediss://:pw@h3/1"),
    )
    assert parse_shards("shard-b,shard-c", sentinels=True) == (("shard-b", ""), ("shard-c", ""))
    assert parse_shards("", sentinels=False) == ()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("B=redis://h/0", "'B' is not a shard's name"),
        ("=redis://h/0", "'' is not a shard's name"),
        ("b=h:6379", "is not name=redis://"),
        ("b", "is not name=redis://"),
    ],
)
def test_bad_shards_are_named(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_shards(text, sentinels=False)
