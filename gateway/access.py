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

A registered `Device` is an identity like a logged-in user (never a superuser): in a public
room it gets the highest of ``policy.authenticated`` and its grants (its own and its
groups'); in a private room, its grants only. `mqtt_access` turns that into the facts the MQTT
decision (`gateway.mqtt_acl`) needs.
"""

from typing import Literal, cast

from channels.db import database_sync_to_async
from django.conf import settings
from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.auth.models import AnonymousUser
from django.db.models import Q, QuerySet

from gateway import stamps
from gateway.models import Device, Room, RoomGrant, RoomPolicy
from gateway.mqtt_acl import Identity, RoomAccess

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
    if not is_known(user):
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


# Answers of this process, while the access stamp stands (`gateway.stamps`): a burst of
# sockets into a room asks the database once. Changes move the stamp (`watch_access_changes`).
_answers: "stamps.Stamped[Access]" = stamps.Stamped(max_entries=10_000, max_age=5.0)


async def aaccess_cached(user: User, room: str, stamp: stamps.Stamp) -> Access:
    """`access_for`, answered from this process's answers while no policy, grant, user or
    group changed since (and for at most ``ACCESS_RECHECK_SECONDS``); ``stamp``: the
    `stamps.ACCESS` stamp, read before now."""
    key = (user.pk if is_known(user) else None, room)  # type: ignore[union-attr]
    _answers.max_age = settings.ACCESS_RECHECK_SECONDS

    async def load() -> tuple[Access, int]:
        return await aaccess_for(user, room), 1

    return await _answers.answer(key, stamp, load)


def visible_rooms(user: User) -> QuerySet[Room]:
    """The rooms ``user`` may read: the public ones open to them and those they are granted."""
    if not is_known(user):
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


def is_known(user: User) -> bool:
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


def mqtt_identity(username: str | None, *, bridge_username: str | None) -> Identity:
    """The identity behind an MQTT user name: the bridge, a device, or anonymous (None)."""
    if username is None or username == "":
        return Identity.anonymous()
    if bridge_username is not None and username == bridge_username:
        return Identity("bridge", username)
    return Identity("device", username)


def mqtt_access(identity: Identity, *, anonymous_mqtt: bool) -> RoomAccess:
    """What ``identity`` may do over MQTT, read from the policies and grants (a few queries).

    A device that is not registered, or not active, may do nothing, connect included.
    """
    if identity.kind == "bridge":
        return RoomAccess(default="write", connect=True)
    policies = {p.room: p for p in RoomPolicy.objects.all()}
    if identity.kind == "anonymous":
        if not anonymous_mqtt:
            return RoomAccess()
        anonymous: dict[str, Access] = {
            room: "none" if p.private else cast(Access, p.anonymous) for room, p in policies.items()
        }
        devices = frozenset(Device.objects.values_list("name", flat=True))
        return RoomAccess(default=DEFAULT_ACCESS, rooms=anonymous, connect=True, devices=devices)
    device = Device.objects.filter(name=identity.name, is_active=True).first()
    if device is None:
        return RoomAccess()
    granted: dict[str, list[Access]] = {}
    for room, level in RoomGrant.objects.filter(
        Q(device=device) | Q(group__in=device.groups.all())
    ).values_list("room", "access"):
        granted.setdefault(room, []).append(cast(Access, level))
    rooms: dict[str, Access] = {}
    for room in policies.keys() | granted.keys():
        policy = policies.get(room)
        if policy is None:
            base: Access = DEFAULT_ACCESS
        else:
            base = "none" if policy.private else cast(Access, policy.authenticated)
        rooms[room] = highest(base, *granted.get(room, ()))
    return RoomAccess(default=DEFAULT_ACCESS, rooms=rooms, connect=True)


def watch_access_changes() -> None:
    """Move the access stamp whenever something `access_for` reads is saved or deleted: room
    policies and grants, users (their activity and superuser flag), groups and memberships."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group
    from django.db.models.signals import m2m_changed, post_delete, post_save

    user_model = get_user_model()
    for model in (RoomPolicy, RoomGrant, Group, user_model):
        post_save.connect(_access_changed, sender=model, dispatch_uid=f"access-save-{model}")
        post_delete.connect(_access_changed, sender=model, dispatch_uid=f"access-delete-{model}")
    groups = getattr(user_model, "groups", None)
    if groups is not None:  # absent from custom users without PermissionsMixin
        m2m_changed.connect(_access_changed, sender=groups.through, dispatch_uid="access-groups")


def _access_changed(sender: object, **kwargs: object) -> None:
    if kwargs.get("update_fields") == frozenset({"last_login"}):
        return  # a login changes nobody's access
    stamps.bump_on_commit(stamps.ACCESS)
