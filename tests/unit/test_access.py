"""Room access: every rule of `gateway.access`, for every kind of user and room."""

from dataclasses import dataclass
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.contrib.auth.models import AnonymousUser, Group
from django.db import IntegrityError, transaction

from gateway.access import Access, aaccess_for, access_for, can_read, can_write, visible_rooms
from gateway.models import Room, RoomGrant, RoomPolicy

# Rooms, by what their policy says:
#   open      no policy
#   readonly  public, anonymous "read", authenticated "read"
#   members   public, anonymous "none", authenticated "write"
#   closed    public, anonymous "none", authenticated "none"
#   secret    private (its anonymous and authenticated "write" must be ignored)
ROOMS = ("open", "readonly", "members", "closed", "secret")

# Users:
#   anonymous   not logged in
#   plain       logged in, no grants
#   granted     user grants: readonly write, closed read, secret write
#   member      in group "viewers": closed read, secret read
#   both        user grant secret read, and in groups "viewers" (read) and "editors" (write)
#   superuser   no grants
#   inactive    has the same grants as "granted", but is_active is False
EXPECTED: dict[str, dict[str, Access]] = {
    "anonymous": {
        "open": "write",
        "readonly": "read",
        "members": "none",
        "closed": "none",
        "secret": "none",
    },
    "plain": {
        "open": "write",
        "readonly": "read",
        "members": "write",
        "closed": "none",
        "secret": "none",
    },
    "granted": {
        "open": "write",
        "readonly": "write",
        "members": "write",
        "closed": "read",
        "secret": "write",
    },
    "member": {
        "open": "write",
        "readonly": "read",
        "members": "write",
        "closed": "read",
        "secret": "read",
    },
    "both": {
        "open": "write",
        "readonly": "read",
        "members": "write",
        "closed": "read",
        "secret": "write",
    },
    "superuser": dict.fromkeys(ROOMS, "write"),
    "inactive": {
        "open": "write",
        "readonly": "read",
        "members": "none",
        "closed": "none",
        "secret": "none",
    },
}


@dataclass
class World:
    users: dict[str, Any]


def build_world(user_model: Any) -> World:
    RoomPolicy.objects.create(room="readonly", anonymous="read", authenticated="read")
    RoomPolicy.objects.create(room="members", anonymous="none", authenticated="write")
    RoomPolicy.objects.create(room="closed", anonymous="none", authenticated="none")
    RoomPolicy.objects.create(room="secret", private=True, anonymous="write", authenticated="write")
    for name in ROOMS:
        Room.objects.create(name=name)
    users: dict[str, Any] = {"anonymous": AnonymousUser()}
    for name in ("plain", "granted", "member", "both", "inactive"):
        users[name] = user_model.objects.create_user(name)  # no password: no slow hashing
    users["superuser"] = user_model.objects.create_superuser("root")
    users["inactive"].is_active = False
    users["inactive"].save()
    viewers, editors = Group.objects.create(name="viewers"), Group.objects.create(name="editors")
    users["member"].groups.add(viewers)
    users["both"].groups.add(viewers, editors)
    for user in (users["granted"], users["inactive"]):
        RoomGrant.objects.create(room="readonly", user=user, access="write")
        RoomGrant.objects.create(room="closed", user=user, access="read")
        RoomGrant.objects.create(room="secret", user=user, access="write")
    RoomGrant.objects.create(room="closed", group=viewers, access="read")
    RoomGrant.objects.create(room="secret", group=viewers, access="read")
    RoomGrant.objects.create(room="secret", group=editors, access="write")
    RoomGrant.objects.create(room="secret", user=users["both"], access="read")
    return World(users)


@pytest.fixture
def world(django_user_model: Any) -> World:
    return build_world(django_user_model)


CASES = [(user, room, access) for user, rooms in EXPECTED.items() for room, access in rooms.items()]


@pytest.mark.django_db
@pytest.mark.parametrize(("user", "room", "expected"), CASES)
def test_access_follows_the_rules(world: World, user: str, room: str, expected: Access) -> None:
    assert access_for(world.users[user], room) == expected


@pytest.mark.django_db
def test_no_user_is_anonymous(world: World) -> None:
    assert [access_for(None, room) for room in ROOMS] == [
        EXPECTED["anonymous"][room] for room in ROOMS
    ]


@pytest.mark.django_db
@pytest.mark.parametrize("user", ["anonymous", "plain", "member", "both"])
def test_access_takes_at_most_two_queries(
    world: World, user: str, django_assert_max_num_queries: Any
) -> None:
    with django_assert_max_num_queries(2):
        access_for(world.users[user], "secret")


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("user", "expected"),
    [
        (user, {room for room, access in rooms.items() if can_read(access)})
        for user, rooms in EXPECTED.items()
    ],
)
def test_visible_rooms_are_the_readable_ones(world: World, user: str, expected: set[str]) -> None:
    assert set(visible_rooms(world.users[user]).values_list("name", flat=True)) == expected


@pytest.mark.django_db
def test_visible_rooms_is_a_queryset_of_rooms(world: World) -> None:
    rooms = visible_rooms(world.users["member"]).order_by("name")
    assert [room.name for room in rooms] == ["closed", "members", "open", "readonly", "secret"]


@pytest.mark.django_db(transaction=True)
async def test_the_async_variant_gives_the_same_answers(django_user_model: Any) -> None:
    world = await database_sync_to_async(build_world)(django_user_model)
    for user, rooms in EXPECTED.items():
        for room, expected in rooms.items():
            assert await aaccess_for(world.users[user], room) == expected, (user, room)


@pytest.mark.parametrize(
    ("access", "read", "write"),
    [("none", False, False), ("read", True, False), ("write", True, True)],
)
def test_read_and_write_by_level(access: Access, read: bool, write: bool) -> None:
    assert (can_read(access), can_write(access)) == (read, write)


@pytest.mark.django_db
def test_a_grant_names_a_user_or_a_group_not_both(django_user_model: Any) -> None:
    user = django_user_model.objects.create_user("u")
    group = Group.objects.create(name="g")
    for who in ({"user": user, "group": group}, {}):
        with pytest.raises(IntegrityError), transaction.atomic():
            RoomGrant.objects.create(room="lab", access="read", **who)


@pytest.mark.django_db
def test_one_grant_per_room_and_user(django_user_model: Any) -> None:
    user = django_user_model.objects.create_user("u")
    RoomGrant.objects.create(room="lab", user=user, access="read")
    RoomGrant.objects.create(room="other", user=user, access="read")
    with pytest.raises(IntegrityError):
        RoomGrant.objects.create(room="lab", user=user, access="write")
