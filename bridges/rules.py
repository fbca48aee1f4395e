"""Topic <-> room rules of the bridge: declarative, validated once at start-up.

A rule maps inbound MQTT topics to a room (``topic`` with ``{name}`` captures -> ``room``), rooms
to an outbound topic (``room`` reversed -> ``publish_to``), or both. Everything here is pure but
`load_rules`, which may read the rules file named by ``BRIDGE_RULES``.
"""

import re
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Literal, get_args

from django.core.exceptions import ImproperlyConfigured

from bridges.codecs import get_codec
from gateway.jsonutil import parse_json
from gateway.mqtt_acl import covers
from gateway.rooms import MAX_ROOM_LENGTH, is_valid_room

Direction = Literal["in", "out", "both"]

ROUTES_KEPT = 10_000  # topics whose rooms the rules remember, at most
MAX_TOPIC_LENGTH = 512  # a device topic the bridge takes in (it may be kept as room state)
MAX_SENDER_LENGTH = 64  # a device's sender level, as rooms and presence show it
_RULE_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ROOM_LITERAL = re.compile(r"[A-Za-z0-9_.\-]*")
# A placeholder's share of a room; non-greedy is unambiguous since adjacent ones are refused.
_ROOM_VALUE = r"[A-Za-z0-9_.\-]+?"
# (accepted types, how to say it in an error), per field, as JSON spells them.
_STR, _STR_OR_NULL = ((str,), "a string"), ((str, type(None)), "a string or null")
_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    **dict.fromkeys(("name", "direction", "room", "codec"), _STR),
    **dict.fromkeys(("topic", "sender", "publish_to"), _STR_OR_NULL),
    "qos": ((int,), "0, 1 or 2"),
    "retain": ((bool,), "true or false"),
    "presence": ((bool,), "true or false"),
}


class _RuleError(Exception):
    """What is wrong with one rule; `Rule` prefixes the rule's name."""


def _template(what: str, template: str, known: set[str] | None = None) -> tuple[str, ...]:
    """Literal and placeholder parts, alternating: ``"a-{b}"`` -> ``("a-", "b", "")``.

    ``known`` are the placeholders the template may use (None: any).
    """
    parts = tuple(_PLACEHOLDER.split(template))
    if any("{" in literal or "}" in literal for literal in parts[::2]):
        raise _RuleError(f"{what} {template!r} has an unmatched brace")
    for name in parts[1::2]:
        if not name:
            raise _RuleError(f"{what} {template!r} has an empty placeholder {{}}")
        if not _IDENTIFIER.fullmatch(name):
            raise _RuleError(f"{what} placeholder {{{name}}} is not a name (letters, digits, _)")
        if known is not None and name not in known:
            raise _RuleError(
                f"{what} {template!r} has unknown placeholder {{{name}}}: known are {sorted(known)}"
            )
    return parts


def _render(parts: tuple[str, ...], values: dict[str, str]) -> str:
    return "".join(values[part] if i % 2 else part for i, part in enumerate(parts))


def _check_topic(topic: str) -> tuple[tuple[str, ...], tuple[tuple[int, str], ...]]:
    """The filter's levels (captures as ``+``) and the captures as (level index, name)."""
    if not topic:
        raise _RuleError("topic is empty")
    if "\x00" in topic:
        raise _RuleError("topic contains NUL")
    if topic.startswith("$"):
        raise _RuleError(f"topic {topic!r} starts with '$' (the bridge adds $share itself)")
    levels = topic.split("/")
    captures: list[tuple[int, str]] = []
    for index, level in enumerate(levels):
        if _PLACEHOLDER.fullmatch(level):
            name = _template("topic", level)[1]
            if name in (seen for _, seen in captures):
                raise _RuleError(f"topic {topic!r} captures {{{name}}} twice")
            captures.append((index, name))
            levels[index] = "+"
        elif "{" in level or "}" in level:
            raise _RuleError(f"topic {topic!r}: a {{name}} capture must be a whole level")
        elif level == "#" and index != len(levels) - 1:
            raise _RuleError(f"topic {topic!r}: '#' must be the last level")
        elif level not in ("+", "#") and ("+" in level or "#" in level):
            raise _RuleError(f"topic {topic!r}: '+' and '#' must be a whole level")
    return tuple(levels), tuple(captures)


def _check_room(room: str, captures: set[str] | None) -> tuple[str, ...]:
    """The room template's parts; ``captures`` are the names it may use (None: any, out rules)."""
    parts = _template("room", room, captures)
    literal = "".join(parts[::2])
    if not room:
        raise _RuleError("room is empty")
    if not _ROOM_LITERAL.fullmatch(literal):
        raise _RuleError(f"room {room!r} has characters outside [A-Za-z0-9_.-]")
    if parts[0][:1] in (".", "-"):
        raise _RuleError(f"room {room!r} starts with {parts[0][0]!r}: room names cannot")
    if len(literal) > MAX_ROOM_LENGTH:
        raise _RuleError(f"room {room!r} is longer than {MAX_ROOM_LENGTH} characters")
    if any(not between for between in parts[2:-1:2]):
        raise _RuleError(f"room {room!r} has adjacent placeholders: it could not be reversed")
    return parts


def _reverse(parts: tuple[str, ...]) -> re.Pattern[str]:
    """A pattern matching the rooms a template renders, one group per placeholder."""
    pattern: list[str] = []
    seen: set[str] = set()
    for i, part in enumerate(parts):
        if not i % 2:
            pattern.append(re.escape(part))
        elif part in seen:
            pattern.append(f"(?P={part})")
        else:
            pattern.append(f"(?P<{part}>{_ROOM_VALUE})")
            seen.add(part)
    return re.compile("".join(pattern))


@dataclass(frozen=True, kw_only=True)
class Rule:
    """One topic <-> room mapping; invalid values raise `ImproperlyConfigured` naming the rule.

    Attributes:
        name: unique, 1-64 of ``[A-Za-z0-9_.-]``.
        direction: ``in`` (topic to room), ``out`` (room to topic) or ``both``.
        topic: inbound filter; ``{name}`` captures one level like ``+``. Not for out rules.
        room: room template, e.g. ``site-{site}``; reversed for outbound topics.
        sender: sender template from captures, e.g. ``{device}``; None means no sender.
        publish_to: outbound topic template using the room's placeholders. Not for in rules.
        qos, retain: of the subscription (qos) and of outbound publications.
        codec: the payload codec's name (`bridges.codecs`).
        presence: the topic carries the sender's status (``online``/``offline``, true/false),
            which makes the device present in the room or not, instead of a message.
    """

    name: str
    direction: Direction = "in"
    topic: str | None = None
    room: str
    sender: str | None = None
    publish_to: str | None = None
    qos: Literal[0, 1, 2] = 1
    retain: bool = False
    codec: str = "json"
    presence: bool = False
    # Precomputed for the hot path: filter levels without a trailing '#', and so on.
    _levels: tuple[str, ...] = field(init=False, repr=False, compare=False)
    _multi: bool = field(init=False, repr=False, compare=False)
    _captures: tuple[tuple[int, str], ...] = field(init=False, repr=False, compare=False)
    _room: tuple[str, ...] = field(init=False, repr=False, compare=False)
    _sender: tuple[str, ...] | None = field(init=False, repr=False, compare=False)
    _publish_to: tuple[str, ...] | None = field(init=False, repr=False, compare=False)
    _reversed: re.Pattern[str] | None = field(init=False, repr=False, compare=False)
    _room_re: re.Pattern[str] = field(init=False, repr=False, compare=False)
    _sender_re: re.Pattern[str] | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        try:
            self._check_values()
            self._compile()
        except _RuleError as exc:
            raise ImproperlyConfigured(f"bridge rule {self.name!r}: {exc}") from None

    def _check_values(self) -> None:
        if not isinstance(self.name, str) or not _RULE_NAME.fullmatch(self.name):
            raise _RuleError("name must be 1-64 of [A-Za-z0-9_.-]")
        for key, (types, expected) in _TYPES.items():
            value = getattr(self, key)
            if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
                raise _RuleError(f"{key} must be {expected}, not {value!r}")
        if self.direction not in get_args(Direction):
            raise _RuleError(f"direction {self.direction!r} must be 'in', 'out' or 'both'")
        if self.qos not in (0, 1, 2):
            raise _RuleError(f"qos must be 0, 1 or 2, not {self.qos!r}")
        try:
            get_codec(self.codec)
        except KeyError as exc:
            raise _RuleError(exc.args[0]) from None
        inbound, outbound = self.direction != "out", self.direction != "in"
        for key, needed, allowed in (
            ("topic", inbound, inbound),
            ("sender", False, inbound),
            ("publish_to", outbound, outbound),
        ):
            if needed and getattr(self, key) is None:
                raise _RuleError(f"{key} is required by direction {self.direction!r}")
            if not allowed and getattr(self, key) is not None:
                raise _RuleError(f"{key} has no use in direction {self.direction!r}")
        if self.presence and (self.direction != "in" or self.sender is None):
            raise _RuleError("presence needs direction 'in' and a sender to name the device")

    def _compile(self) -> None:
        levels: tuple[str, ...] = ()
        captures: tuple[tuple[int, str], ...] = ()
        if self.topic is not None:
            levels, captures = _check_topic(self.topic)
        names = {name for _, name in captures}
        room = _check_room(self.room, names if self.topic is not None else None)
        sender = None
        if self.sender is not None:
            if not self.sender:
                raise _RuleError("sender is empty: use null for no sender")
            sender = _template("sender", self.sender, names)
        publish_to = None
        if self.publish_to is not None:
            publish_to = _check_publish_to(self.publish_to, set(room[1::2]))
        for key, value in {
            "_levels": levels[:-1] if levels[-1:] == ("#",) else levels,
            "_multi": levels[-1:] == ("#",),
            "_captures": captures,
            "_room": room,
            "_sender": sender,
            "_publish_to": publish_to,
            "_reversed": _reverse(room) if publish_to is not None else None,
            "_room_re": _reverse(room),
            "_sender_re": _reverse(sender) if sender is not None else None,
        }.items():
            object.__setattr__(self, key, value)

    def subscription(self) -> str:
        """The MQTT filter to subscribe to: the topic with captures as ``+`` ("" for out rules)."""
        return "/".join((*self._levels, "#") if self._multi else self._levels)

    def match(self, topic: str) -> "Inbound | None":
        """Where ``topic`` leads; None if it does not match or yields an invalid room."""
        values = self._capture(topic)
        if values is None:
            return None
        room = _render(self._room, values)
        # An empty level names nothing, and a room made from one could not be reversed.
        if not all(values[name] for name in self._room[1::2]) or not is_valid_room(room):
            return None
        sender = None
        if self._sender is not None and all(values[name] for name in self._sender[1::2]):
            sender = _render(self._sender, values)
        return Inbound(rule=self, room=room, sender=sender)

    def _capture(self, topic: str) -> dict[str, str] | None:
        """MQTT matching of the filter (out rules match nothing), and the captured levels."""
        levels, parts = self._levels, topic.split("/")
        if len(parts) != len(levels) and not (self._multi and len(parts) >= len(levels)):
            return None
        # A filter never starts with '$' here, so a '$' topic could only match a wildcard.
        if topic.startswith("$"):
            return None
        for want, got in zip(levels, parts, strict=False):
            if want not in (got, "+"):
                return None
        return {name: parts[index] for index, name in self._captures}

    def outbound_topic(self, room: str) -> str | None:
        """The topic ``room``'s messages go to; None if this rule does not cover the room."""
        if self._reversed is None or self._publish_to is None or not is_valid_room(room):
            return None
        found = self._reversed.fullmatch(room)
        # Values come from a valid room: no '/', '+', '#', '$' or NUL can enter the topic.
        return None if found is None else _render(self._publish_to, found.groupdict())

    def inbound_filter(self, room: str | None, sender: str | None) -> str | None:
        """The filter of this rule's topics that reach ``room`` under sender ``sender``.

        None means any room or sender (``+``); the answer is None when the rule takes no
        topic in, or cannot make that room or sender.
        """
        if self.direction == "out":
            return None
        values: dict[str, str] = {}
        for wanted, pattern in ((room, self._room_re), (sender, self._sender_re)):
            if wanted is None:
                continue
            found = None if pattern is None else pattern.fullmatch(wanted)
            if found is None:
                return None
            for name, value in found.groupdict().items():
                if values.setdefault(name, value) != value:
                    return None
        levels = list(self._levels)
        for index, name in self._captures:
            levels[index] = values.get(name, "+")
        return "/".join((*levels, "#") if self._multi else levels)

    def outbound_filter(self, room: str | None) -> str | None:
        """The topic ``room``'s messages go to by this rule; for any room, with ``+`` levels."""
        if self._publish_to is None:
            return None
        if room is not None:
            return self.outbound_topic(room)
        topic = _render(self._publish_to, dict.fromkeys(self._publish_to[1::2], "{}"))
        return "/".join("+" if "{}" in level else level for level in topic.split("/"))


def is_valid_sender(sender: str) -> bool:
    """Whether a sender taken from a topic can be shown: 1-64 printable characters."""
    return 0 < len(sender) <= MAX_SENDER_LENGTH and sender.isprintable()


def _check_publish_to(publish_to: str, placeholders: set[str]) -> tuple[str, ...]:
    if not publish_to:
        raise _RuleError("publish_to is empty")
    if publish_to.startswith("$"):
        raise _RuleError(f"publish_to {publish_to!r} starts with '$'")
    if {"+", "#", "\x00"} & set(publish_to):
        raise _RuleError(f"publish_to {publish_to!r} contains '+', '#' or NUL")
    return _template("publish_to", publish_to, placeholders)


@dataclass(frozen=True, slots=True)
class Inbound:
    """An inbound topic's destination: the rule, the room and the sender (None: no sender)."""

    rule: Rule
    room: str
    sender: str | None


@dataclass(frozen=True)
class RuleSet:
    """The bridge's rules, in order; rule names are unique."""

    rules: tuple[Rule, ...]
    _in: tuple[Rule, ...] = field(init=False, repr=False, compare=False)
    _out: tuple[Rule, ...] = field(init=False, repr=False, compare=False)
    # topic -> where it leads: devices publish to the same topics again and again
    _routes: dict[str, tuple[Inbound, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        names = [rule.name for rule in self.rules]
        for name in {name for name in names if names.count(name) > 1}:
            raise ImproperlyConfigured(f"bridge rule {name!r}: the name is used twice")
        object.__setattr__(self, "_in", tuple(r for r in self.rules if r.direction != "out"))
        object.__setattr__(self, "_out", tuple(r for r in self.rules if r.direction != "in"))
        object.__setattr__(self, "_routes", {})

    def inbound(self, topic: str) -> list[Inbound]:
        """Every room ``topic`` reaches, in rule order; the first rule for a room wins."""
        routes = self._routes.get(topic)
        if routes is None:
            found: dict[str, Inbound] = {}
            for rule in self._in:
                inbound = rule.match(topic)
                if inbound is not None and inbound.room not in found:
                    found[inbound.room] = inbound
            routes = tuple(found.values())
            if len(self._routes) >= ROUTES_KEPT:  # many one-off topics: start afresh
                self._routes.clear()
            self._routes[topic] = routes
        return list(routes)

    def outbound(self, room: str) -> list[tuple[Rule, str]]:
        """Every (rule, topic) ``room``'s messages go to, one per distinct topic."""
        found: dict[str, Rule] = {}
        for rule in self._out:
            topic = rule.outbound_topic(room)
            if topic is not None and topic not in found:
                found[topic] = rule
        return [(rule, topic) for topic, rule in found.items()]

    def subscriptions(self) -> list[tuple[str, int]]:
        """Filters to subscribe to, in rule order, each at the highest qos asking.

        A filter that another one covers is left out (its qos goes to the wider one): a broker
        may send one copy of a message per matching subscription, and each copy would reach
        the room as a message of its own.
        """
        qos: dict[str, int] = {}
        for rule in self._in:
            qos[rule.subscription()] = max(rule.qos, qos.get(rule.subscription(), 0))
        kept: dict[str, int] = {}
        for topic, level in qos.items():
            wider = next((other for other in qos if other != topic and covers(other, topic)), None)
            if wider is None:
                kept[topic] = max(level, kept.get(topic, 0))
            else:
                qos[wider] = kept[wider] = max(level, qos[wider], kept.get(wider, 0))
        return [(topic, kept[topic]) for topic in qos if topic in kept]

    # The topics of rooms, for the permission model (`gateway.mqtt_acl.RoomTopics`).

    def sender_filters(self, room: str | None, sender: str | None) -> list[str]:
        """Inbound filters reaching ``room`` under sender level ``sender`` (None: any)."""
        found = (rule.inbound_filter(room, sender) for rule in self._in if rule.sender)
        return [topic for topic in dict.fromkeys(found) if topic is not None]

    def senderless_filters(self, room: str | None) -> list[str]:
        """Inbound filters reaching ``room`` whose messages name no sender."""
        found = (rule.inbound_filter(room, None) for rule in self._in if not rule.sender)
        return [topic for topic in dict.fromkeys(found) if topic is not None]

    def outbound_filters(self, room: str | None) -> list[str]:
        """The topics the bridge publishes ``room``'s messages to (any room: ``+`` levels)."""
        found = (rule.outbound_filter(room) for rule in self._out)
        return [topic for topic in dict.fromkeys(found) if topic is not None]

    def codec_for(self, topic: str) -> str:
        """The codec of the first rule that takes ``topic`` in, ``json`` if none does."""
        inbound = self.inbound(topic)
        return inbound[0].rule.codec if inbound else "json"


def parse_rules(raw: object) -> RuleSet:
    """Rules from their JSON form: a list of objects with `Rule`'s fields."""
    if not isinstance(raw, list) or not raw:
        raise ImproperlyConfigured("bridge rules must be a non-empty list of rule objects")
    known = [f.name for f in fields(Rule) if f.init]
    required = [f.name for f in fields(Rule) if f.init and f.default is MISSING]
    rules: list[Rule] = []
    for index, item in enumerate(raw):
        if not isinstance(item, dict):
            raise ImproperlyConfigured(f"bridge rule #{index}: must be an object, not {item!r}")
        name = item.get("name")
        if not isinstance(name, str) or not _RULE_NAME.fullmatch(name):
            raise ImproperlyConfigured(
                f"bridge rule #{index}: name must be 1-64 of [A-Za-z0-9_.-], not {name!r}"
            )
        unknown = sorted(set(item) - set(known))
        if unknown:
            raise ImproperlyConfigured(
                f"bridge rule {name!r}: unknown keys {unknown}; known {known}"
            )
        missing = [key for key in required if key not in item]
        if missing:
            raise ImproperlyConfigured(f"bridge rule {name!r}: {missing[0]} is missing")
        rules.append(Rule(**item))
    return RuleSet(tuple(rules))


# The default topics: a device's status on rooms/<room>/<sender>/status (first, so it is
# presence, not a message); devices publish to rooms/<room> or rooms/<room>/<sender>/...; and a
# room's messages go out on rooms/<room>/gateway.
DEFAULT_RULES_RAW: list[dict[str, object]] = [
    {
        "name": "device-status",
        "direction": "in",
        "topic": "rooms/{room}/{sender}/status",
        "room": "{room}",
        "sender": "{sender}",
        "presence": True,
    },
    {
        "name": "device-in",
        "direction": "in",
        "topic": "rooms/{room}/{sender}/#",
        "room": "{room}",
        "sender": "{sender}",
    },
    {"name": "room-in", "direction": "in", "topic": "rooms/{room}", "room": "{room}"},
    {
        "name": "gateway-out",
        "direction": "out",
        "room": "{room}",
        "publish_to": "rooms/{room}/gateway",
    },
]
DEFAULT_RULES: RuleSet = parse_rules(DEFAULT_RULES_RAW)


def load_rules(value: str | None) -> RuleSet:
    """``BRIDGE_RULES``: unset or empty for the defaults, inline JSON, or a JSON file's path."""
    if not value:
        return DEFAULT_RULES
    if value.lstrip().startswith("["):
        source, text = "BRIDGE_RULES", value
    else:
        source = f"BRIDGE_RULES file {value!r}"
        try:
            text = Path(value).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ImproperlyConfigured(f"{source} cannot be read: {exc}") from exc
    try:
        raw = parse_json(text)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{source} is not valid JSON: {exc}") from exc
    try:
        return parse_rules(raw)
    except ImproperlyConfigured as exc:
        raise ImproperlyConfigured(f"{exc} (in {source})") from None
