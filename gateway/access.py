"""Who may read and write which room.

Access is one of ``"none" < "read" < "write"``. Reading is joining a room and seeing its
messages; writing is also sending to it. The rules, for a user and a room name:

- A superuser gets ``"write"`` everywhere.
- A room without a `RoomPolicy` is public and anyone, logged in or not, gets ``"write"``
  (the behaviour of the Channels tutorial, and of the gateway before policies existed).
- In a public room, an anonymous user gets ``policy.anonymous``; a logged-in user (session or
  API token) gets the highest of ``policy.authenticated`` and their grants.
- In a private room, an anonymous user gets ``"none"``, always; a logged-in user gets only
  their grants: the highest of their own `RoomGrant` and those of their groups, or ``"none"``.
- An inactive user is treated as anonymous.
"""

from typing import Literal, cast

from channels.db import database_sync_to_async
from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.auth.models import AnonymousUser
from django.db.models import Q, QuerySet

from gateway.models import Room, RoomGrant, RoomPolicy

Access = Literal["none", "read", "write"]

# What an anonymous user gets in a room without a policy.
DEFAULT_ACCESS: Access = "write"
_RANK: dict[str, int] = {"none": 0, "read": 1, "write": 2}

User = AbstractBaseUser | AnonymousUser | None


def highest(*levels: Access) -> Access:
    """The highest of ``levels`` (``"none"`` when there are none)."""
    return max(levels, key=_RANK.__getitem__, default="none")


def can_read(access: Access) -> bool:
    """Whether ``access`` lets a user join a room and see its messages."""
    return _RANK[access] >= _RANK["read"]


def can_write(access: Access) -> bool:
    """Whether ``access`` lets a user send messages to a room."""
    return access == "write"


def access_for(user: User, room: str) -> Access:
    """What ``user`` may do in ``room``, by the rules above (at most two queries)."""
    if not _is_known(user):
        policy = RoomPolicy.objects.filter(room=room).first()
        if policy is None:
            return DEFAULT_ACCESS
        return "none" if policy.private else cast(Access, policy.anonymous)
    assert user is not None
    if _is_superuser(user):
        return "write"
    policy = RoomPolicy.objects.filter(room=room).first()
    if policy is None:
        return DEFAULT_ACCESS
    base: Access = "none" if policy.private else cast(Access, policy.authenticated)
    if base == "write":  # grants cannot add to it: spare the query
        return base
    grants = RoomGrant.objects.filter(_grants_of(user), room=room).values_list("access", flat=True)
    return highest(base, *(cast(Access, level) for level in grants))


async def aaccess_for(user: User, room: str) -> Access:
    """`access_for` from async code."""
    access: Access = await database_sync_to_async(access_for)(user, room)
    return access


def visible_rooms(user: User) -> QuerySet[Room]:
    """The rooms ``user`` may read: the public ones open to them and those they are granted."""
    if not _is_known(user):
        hidden = RoomPolicy.objects.filter(Q(private=True) | Q(anonymous="none"))
        return Room.objects.exclude(name__in=hidden.values("room"))
    assert user is not None
    if _is_superuser(user):
        return Room.objects.all()
    hidden = RoomPolicy.objects.filter(Q(private=True) | Q(authenticated="none"))
    # Every grant is at least "read", so any grant makes a room visible.
    granted = RoomGrant.objects.filter(_grants_of(user))
    return Room.objects.filter(
        ~Q(name__in=hidden.values("room")) | Q(name__in=granted.values("room"))
    )


def _is_known(user: User) -> bool:
    """Whether ``user`` is logged in and active (anyone else is anonymous)."""
    return user is not None and user.is_authenticated and bool(user.is_active)


def _is_superuser(user: AbstractBaseUser | AnonymousUser) -> bool:
    return bool(getattr(user, "is_superuser", False))


def _grants_of(user: AbstractBaseUser | AnonymousUser) -> Q:
    """The grants that apply to ``user``: their own and their groups'."""
    condition = Q(user_id=user.pk)
    groups = getattr(user, "groups", None)  # absent from custom users without PermissionsMixin
    if groups is not None:
        # A subquery, not a list: the grants stay one query.
        condition |= Q(group__in=groups.all())
    return condition
