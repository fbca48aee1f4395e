"""The MQTT half of the permission model: one pure decision for every broker adapter.

Rooms are guarded by one set of policies and grants (`gateway.access`). Over MQTT that access
becomes an **ACL**: for one identity (the bridge, a registered device, an anonymous client),
a list of entries ``(action, topic filter, allow or deny, priority)``. `decide` reads it the
way Mosquitto's dynamic security plugin does: the entry of highest priority whose filter
matches wins, and nothing matching means deny. So the same list is

- pushed as it is into Mosquitto's dynamic security plugin (`bridges.dynsec`),
- evaluated in-process by the HTTP hooks (EMQX, mosquitto-go-auth) and the embedded broker.

Which topics belong to which room comes from the bridge's rules, handed in by the edge that
owns them as a `RoomTopics`. The decisions, for a device with ``read`` or ``write`` on a room:

- it may subscribe to and receive the room's topics (devices', and the gateway's outbound one);
- with ``write``, it may publish to the room's inbound topics **under its own sender level**
  only (``rooms/<room>/<its name>/...``): never as another device, never as the gateway, and
  not to a topic without a sender level (``rooms/<room>``), whose messages would name nobody;
- ``gateways/#`` and ``$CONTROL/#`` belong to the bridge alone; so does publishing to a room's
  outbound topics (``rooms/<room>/gateway``).

Anonymous clients get nothing unless anonymous MQTT is turned on; then, in public rooms, they
get the room's anonymous level, as on the WebSocket, and may publish under any sender level
that is not a registered device's, or to the room's topic without a sender level.
"""

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

Action = Literal["connect", "publish", "subscribe", "receive"]
TopicAction = Literal["publish", "subscribe", "receive"]
Kind = Literal["bridge", "device", "anonymous"]
Access = Literal["none", "read", "write"]

TOPIC_ACTIONS: tuple[TopicAction, ...] = ("publish", "subscribe", "receive")
# Highest first: what belongs to the bridge, then other devices' levels, then rooms with a
# policy or a grant, then rooms without one.
# (An allowed publish sits one above its level's denials.)
PRIORITY_BRIDGE_ONLY = 40
PRIORITY_OTHERS = 30
PRIORITY_ROOM = 20
PRIORITY_DEFAULT = 10
BRIDGE_ONLY_FILTERS = ("gateways/#", "$CONTROL/#")


class RoomTopics(Protocol):
    """The topic <-> room mapping, from the bridge's rules (``room=None``: any room)."""

    def sender_filters(self, room: str | None, sender: str | None) -> list[str]:
        """Inbound filters reaching ``room`` under sender level ``sender`` (None: any sender)."""
        ...

    def senderless_filters(self, room: str | None) -> list[str]:
        """Inbound filters reaching ``room`` whose messages name no sender."""
        ...

    def outbound_filters(self, room: str | None) -> list[str]:
        """The topics the bridge publishes ``room``'s messages to."""
        ...


@dataclass(frozen=True, slots=True)
class Identity:
    """Who is asking: the bridge, a device (by name), or an anonymous client."""

    kind: Kind
    name: str | None = None

    @classmethod
    def anonymous(cls) -> "Identity":
        return cls("anonymous")


@dataclass(frozen=True)
class RoomAccess:
    """What one identity may do in rooms: the facts `acl` needs, read from the database.

    Attributes:
        default: its access to a room without a policy or grant (``none`` when anonymous MQTT
            is off for an anonymous client).
        rooms: its access to each room that has a policy or a grant.
        connect: whether it may connect at all (an active device; the bridge; an anonymous
            client only when anonymous MQTT is on).
        devices: the names of every registered device, whose levels are theirs alone.
    """

    default: Access = "none"
    rooms: Mapping[str, Access] = field(default_factory=dict)
    connect: bool = False
    devices: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True, order=True)
class AclEntry:
    """One line of an ACL: ``allow`` or deny ``action`` on topics matching ``topic``."""

    priority: int
    action: TopicAction
    topic: str
    allow: bool


def acl(identity: Identity, access: RoomAccess, topics: RoomTopics) -> list[AclEntry]:
    """The identity's ACL, highest priority first (no two entries conflict at one priority)."""
    if identity.kind == "bridge":
        return [AclEntry(PRIORITY_DEFAULT, action, "#", True) for action in TOPIC_ACTIONS] + [
            AclEntry(PRIORITY_DEFAULT, action, "$CONTROL/#", True) for action in TOPIC_ACTIONS
        ]
    if not access.connect:
        return []
    entries: set[AclEntry] = set()
    for topic in BRIDGE_ONLY_FILTERS:
        entries.update(AclEntry(PRIORITY_BRIDGE_ONLY, a, topic, False) for a in TOPIC_ACTIONS)
    entries.update(
        AclEntry(PRIORITY_BRIDGE_ONLY, "publish", topic, False)
        for topic in topics.outbound_filters(None)
    )
    if identity.kind == "anonymous":
        for device in access.devices:
            entries.update(
                AclEntry(PRIORITY_OTHERS, "publish", topic, False)
                for topic in _minimal(topics.sender_filters(None, device))
            )
    entries.update(_room_entries(identity, None, access.default, topics, PRIORITY_DEFAULT))
    for room, level in access.rooms.items():
        entries.update(_room_entries(identity, room, level, topics, PRIORITY_ROOM))
    return sorted(entries, reverse=True)


def _room_entries(
    identity: Identity, room: str | None, level: Access, topics: RoomTopics, priority: int
) -> Iterable[AclEntry]:
    readable = _minimal(
        [
            *topics.sender_filters(room, None),
            *topics.senderless_filters(room),
            *topics.outbound_filters(room),
        ]
    )
    if identity.kind == "anonymous":
        writable = [*topics.sender_filters(room, None), *topics.senderless_filters(room)]
    else:
        writable = topics.sender_filters(room, identity.name)
    may_read, may_write = level in ("read", "write"), level == "write"
    if room is None and not may_read:
        return  # nothing matches: denied by default
    for topic in readable:
        yield AclEntry(priority, "subscribe", topic, may_read)
        yield AclEntry(priority, "receive", topic, may_read)
        # Publishing to the room's other topics (other levels, or all when it may only read);
        # what it may publish to is allowed one priority higher, so the two never tie.
        yield AclEntry(priority, "publish", topic, False)
    if may_write:
        for topic in _minimal(writable):
            yield AclEntry(priority + 1, "publish", topic, True)


def decide(
    identity: Identity, action: Action, topic: str, entries: Iterable[AclEntry], *, connect: bool
) -> bool:
    """Whether ``identity`` may do ``action`` on ``topic`` (a filter, for subscribe).

    Args:
        entries: the identity's ACL (`acl`), highest priority first.
        connect: whether the identity may connect (`RoomAccess.connect`; true for the bridge).
    """
    if action == "connect":
        return connect or identity.kind == "bridge"
    if not (connect or identity.kind == "bridge"):
        return False
    if action == "subscribe":
        topic = shared_topic(topic)
    if not is_valid_topic(topic, wildcards=action == "subscribe"):
        return False
    match = covers if action == "subscribe" else matches
    for entry in entries:
        if entry.action == action and match(entry.topic, topic):
            return entry.allow
    return False


def shared_topic(topic_filter: str) -> str:
    """The filter of a shared subscription (``$share/<group>/<filter>``), as brokers check it."""
    if topic_filter.startswith("$share/"):
        parts = topic_filter.split("/", 2)
        return parts[2] if len(parts) == 3 and parts[1] else ""
    return topic_filter


def matches(topic_filter: str, topic: str) -> bool:
    """MQTT matching: whether ``topic`` (no wildcards) matches ``topic_filter``.

    As brokers do, a filter starting with a wildcard does not match a topic starting with ``$``,
    and ``a/#`` also matches ``a``. A topic is the narrowest filter: one that covers it.
    """
    return covers(topic_filter, topic)


def covers(wider: str, narrower: str) -> bool:
    """Whether filter ``wider`` matches every topic that filter ``narrower`` matches."""
    if narrower.startswith("$") and wider[:1] in ("+", "#"):
        return False
    outer, inner = wider.split("/"), narrower.split("/")
    for index, level in enumerate(outer):
        if level == "#":
            return True
        if index >= len(inner):
            return False
        if inner[index] == "#":
            return False
        if level not in ("+", inner[index]):
            return False
    return len(outer) == len(inner)


def is_valid_topic(topic: str, *, wildcards: bool) -> bool:
    """A topic (or, with ``wildcards``, a filter) as MQTT allows it: what a broker accepts."""
    if not topic or "\x00" in topic or len(topic.encode("utf-8", "surrogatepass")) > 65535:
        return False
    levels = topic.split("/")
    for index, level in enumerate(levels):
        if not wildcards and ("+" in level or "#" in level):
            return False
        if "#" in level and (level != "#" or index != len(levels) - 1):
            return False
        if "+" in level and level != "+":
            return False
    return True


def _minimal(filters: Iterable[str]) -> list[str]:
    """``filters`` without those another one covers, in order, each once.

    ``P`` and ``P/+/#`` together are ``P/#`` (a room's own topic and its subtopics), so that a
    client may subscribe to ``rooms/kitchen/#`` with one entry to match.
    """
    unique = list(dict.fromkeys(filters))
    for topic in list(unique):
        if f"{topic}/+/#" in unique:
            unique[unique.index(topic)] = f"{topic}/#"
    unique = list(dict.fromkeys(unique))
    return [
        topic
        for topic in unique
        if not any(other != topic and covers(other, topic) for other in unique)
    ]
