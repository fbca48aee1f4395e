"""Topic <-> room rules: MQTT matching, reversing rooms, validation, loading, ``bridge_rules``."""

import io
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.core.exceptions import ImproperlyConfigured
from django.core.management import CommandError, call_command
from django.test import override_settings
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from bridges.codecs import get_codec
from bridges.rules import (
    DEFAULT_RULES,
    DEFAULT_RULES_RAW,
    Inbound,
    Rule,
    RuleSet,
    covers,
    load_rules,
    parse_rules,
)
from gateway.rooms import is_valid_room
from tests.unit.test_rooms import ALPHABET, valid_rooms


def routes(rules: RuleSet, topic: str) -> list[tuple[str, str, str | None]]:
    return [(found.rule.name, found.room, found.sender) for found in rules.inbound(topic)]


def rules_of(*raw: dict[str, Any]) -> RuleSet:
    return parse_rules(list(raw))


# The default rules: today's topics.


@pytest.mark.parametrize(
    ("topic", "expected"),
    [
        ("rooms/kitchen", [("room-in", "kitchen", None)]),
        ("rooms/kitchen/", [("device-in", "kitchen", None)]),
        ("rooms/kitchen/sensor-1", [("device-in", "kitchen", "sensor-1")]),
        ("rooms/kitchen/sensor-1/temp", [("device-in", "kitchen", "sensor-1")]),
        ("rooms/kitchen/sensor-1/temp/c", [("device-in", "kitchen", "sensor-1")]),
        ("rooms/kitchen//x", [("device-in", "kitchen", None)]),
        ("rooms/kitchen/gateway", [("device-in", "kitchen", "gateway")]),
    ],
)
def test_default_rules_route_device_topics_to_their_room(
    topic: str, expected: list[tuple[str, str, str | None]]
) -> None:
    assert routes(DEFAULT_RULES, topic) == expected
    assert DEFAULT_RULES.codec_for(topic) == "json"


@pytest.mark.parametrize(
    "topic",
    [
        "rooms",
        "rooms/",
        "rooms//sensor",
        "room/kitchen",
        "Rooms/kitchen",
        "other/rooms/kitchen",
        "rooms/.x/y",
        "rooms/-x",
        "rooms/" + "x" * 65,
        "rooms/a b",
        "rooms/café/x",
        "/rooms/kitchen",
        "$SYS/rooms/kitchen",
    ],
)
def test_default_rules_drop_topics_naming_no_valid_room(topic: str) -> None:
    assert DEFAULT_RULES.inbound(topic) == []


def test_default_rules_subscribe_and_publish_as_before() -> None:
    assert parse_rules(DEFAULT_RULES_RAW) == DEFAULT_RULES
    assert [rule.name for rule in DEFAULT_RULES.rules] == [
        "device-status",
        "device-in",
        "room-in",
        "gateway-out",
    ]
    # rooms/+/+/status is covered by rooms/+/+/#: one subscription, so one copy per message.
    assert DEFAULT_RULES.subscriptions() == [("rooms/+/+/#", 1), ("rooms/+", 1)]
    [(rule, topic)] = DEFAULT_RULES.outbound("kitchen")
    assert (rule.name, topic, rule.qos, rule.retain) == (
        "gateway-out",
        "rooms/kitchen/gateway",
        1,
        False,
    )
    assert DEFAULT_RULES.outbound("a/b") == []
    assert DEFAULT_RULES.outbound("-x") == []


@given(valid_rooms, st.lists(st.text(alphabet="abc-_1", min_size=1, max_size=8), max_size=3))
def test_default_rules_recover_the_room_of_any_device_topic(room: str, levels: list[str]) -> None:
    name = "device-in" if levels else "room-in"
    sender = levels[0] if levels else None
    assert routes(DEFAULT_RULES, "/".join(["rooms", room, *levels])) == [(name, room, sender)]


@given(valid_rooms)
def test_default_outbound_topics_lead_back_to_the_same_room(room: str) -> None:
    [(_, topic)] = DEFAULT_RULES.outbound(room)
    assert topic == f"rooms/{room}/gateway"
    assert routes(DEFAULT_RULES, topic) == [("device-in", room, "gateway")]


# Captures, overlapping rules, reversing rooms.

SITES = {
    "name": "sites",
    "direction": "both",
    "topic": "sites/{site}/+/telemetry",
    "room": "site-{site}",
    "publish_to": "sites/{site}/commands",
}


@pytest.mark.parametrize(
    ("topic", "room"),
    [
        ("sites/42/dev/telemetry", "site-42"),
        ("sites/north.1/x/telemetry", "site-north.1"),
        ("sites/42//telemetry", "site-42"),
        ("sites/42/telemetry", None),
        ("sites/42/dev/telemetry/x", None),
        ("sites//dev/telemetry", None),  # an empty capture names no site
        ("sites/a b/dev/telemetry", None),  # a valid topic level, but not a valid room
        ("sites/" + "x" * 60 + "/d/telemetry", None),  # too long a room
    ],
)
def test_named_captures_build_the_room(topic: str, room: str | None) -> None:
    rules = rules_of(SITES)
    expected = [("sites", room, None)] if room else []
    assert routes(rules, topic) == expected
    assert rules.subscriptions() == [("sites/+/+/telemetry", 1)]


def test_the_sender_comes_from_its_template() -> None:
    rules = rules_of(
        {"name": "dev", "topic": "d/{site}/{device}/#", "room": "{site}", "sender": "dev-{device}"},
        {"name": "plc", "topic": "plc/{site}", "room": "{site}", "sender": "plc"},
    )
    assert routes(rules, "d/s1/t7/x") == [("dev", "s1", "dev-t7")]
    assert routes(rules, "d/s1//x") == [("dev", "s1", None)]
    assert routes(rules, "plc/s1") == [("plc", "s1", "plc")]


def test_overlapping_rules_deliver_to_each_room_once() -> None:
    rules = rules_of(
        {"name": "by-site", "topic": "s/{site}/{kind}", "room": "site-{site}", "codec": "text"},
        {"name": "by-kind", "topic": "s/{site}/{kind}", "room": "kind-{kind}", "qos": 2},
        {"name": "site-again", "topic": "s/{site}/+", "room": "site-{site}", "sender": "{site}"},
        {"name": "all", "topic": "s/#", "room": "all", "qos": 0},
    )
    assert routes(rules, "s/1/temp") == [
        ("by-site", "site-1", None),
        ("by-kind", "kind-temp", None),
        ("all", "all", None),
    ]
    assert routes(rules, "s/1") == [("all", "all", None)]
    assert rules.codec_for("s/1/temp") == "text"
    assert rules.codec_for("s/1") == "json"
    assert rules.codec_for("elsewhere") == "json"
    assert rules.subscriptions() == [("s/#", 2)]  # s/+/+ is covered by s/#


def test_out_rules_reverse_the_room_template() -> None:
    rules = rules_of(
        SITES,
        {
            "name": "copy",
            "direction": "out",
            "room": "site-{s}",
            "publish_to": "sites/{s}/commands",
        },
        {"name": "floors", "direction": "out", "room": "{b}.{f}", "publish_to": "b/{b}/f/{f}"},
        {"name": "twice", "direction": "out", "room": "{a}-{a}", "publish_to": "twins/{a}"},
        {"name": "lobby", "direction": "out", "room": "lobby", "publish_to": "lobby/out"},
    )
    rooms = ["site-42", "site-a.b-c", "site-", "x.y", "q-q", "q-r", "lobby", "kitchen", "-x.y"]
    published = {room: [(r.name, t) for r, t in rules.outbound(room)] for room in rooms}
    assert published == {
        "site-42": [("sites", "sites/42/commands")],  # "copy" makes the same topic: once
        "site-a.b-c": [("sites", "sites/a.b-c/commands"), ("floors", "b/site-a/f/b-c")],
        "site-": [],
        "x.y": [("floors", "b/x/f/y")],
        "q-q": [("twice", "twins/q")],
        "q-r": [],
        "lobby": [("lobby", "lobby/out")],
        "kitchen": [],
        "-x.y": [],  # not a valid room, though "floors" would cover it
    }
    assert rules.subscriptions() == [("sites/+/+/telemetry", 1)]
    assert rules_of(SITES).rules[0].match("sites/42/commands") is None


def test_mqtt_wildcards_follow_the_specification() -> None:
    def matches(topic_filter: str, topic: str) -> bool:
        return Rule(name="r", topic=topic_filter, room="r").match(topic) is not None

    assert matches("a/#", "a")
    assert matches("a/#", "a/b/c")
    assert matches("#", "a")
    assert not matches("#", "$SYS/x")
    assert not matches("+/x", "$SYS/x")
    assert not matches("{dollar}/x", "$SYS/x")
    assert matches("a/+", "a/")
    assert not matches("a/+", "a")
    assert not matches("a/+", "a/b/c")
    assert matches("a//b", "a//b")
    assert not matches("a/b", "a/b/")
    out = Rule(name="o", direction="out", room="{r}", publish_to="o/{r}")
    assert out.match("o/x") is None
    assert out.subscription() == ""


def test_a_match_carries_its_rule() -> None:
    rule = Rule(name="r", topic="a/{x}", room="{x}")
    assert rule.match("a/k") == Inbound(rule=rule, room="k", sender=None)


# Properties.

FILTER_LEVELS = ["a", "b", "", "+", "{c}"]
TOPIC_LEVELS = ["a", "b", "", "$s"]


def reference_match(topic_filter: str, topic: str) -> bool:
    """MQTT 5 section 4.7, written out recursively."""
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False

    def match(f: list[str], t: list[str]) -> bool:
        if not f:
            return not t
        if f[0] == "#":
            return True
        return bool(t) and f[0] in ("+", t[0]) and match(f[1:], t[1:])

    return match(topic_filter.split("/"), topic.split("/"))


@st.composite
def filters(draw: st.DrawFn) -> str:
    """A filter of the small alphabet, captures numbered so that each name is unique."""
    levels = draw(st.lists(st.sampled_from(FILTER_LEVELS), min_size=1, max_size=4))
    levels = [f"{{c{i}}}" if level == "{c}" else level for i, level in enumerate(levels)]
    if draw(st.booleans()):
        levels.append("#")
    topic_filter = "/".join(levels)
    assume(topic_filter)
    return topic_filter


topics = st.lists(st.sampled_from(TOPIC_LEVELS), min_size=1, max_size=5).map("/".join)


@given(filters(), topics)
def test_matching_agrees_with_the_mqtt_reference(topic_filter: str, topic: str) -> None:
    rule = Rule(name="p", topic=topic_filter, room="r")
    expected = reference_match(re.sub(r"\{c\d+\}", "+", topic_filter), topic)
    assert (rule.match(topic) is not None) == expected
    assert (RuleSet((rule,)).inbound(topic) != []) == expected


@given(filters())
def test_subscriptions_are_the_topic_with_captures_as_plus(topic_filter: str) -> None:
    subscription = Rule(name="p", topic=topic_filter, room="r").subscription()
    assert "{" not in subscription
    assert "}" not in subscription
    expected = ["+" if level.startswith("{") else level for level in topic_filter.split("/")]
    assert subscription.split("/") == expected


@st.composite
def templates(draw: st.DrawFn) -> tuple[str, list[str], str]:
    """A room template of 1-3 placeholders, its placeholders, and a room it renders."""
    names = [f"p{i}" for i in range(draw(st.integers(1, 3)))]
    first = draw(st.text(alphabet=ALPHABET.replace(".", "").replace("-", ""), max_size=3))
    between = [draw(st.text(alphabet=ALPHABET, min_size=1, max_size=3)) for _ in names[1:]]
    last = draw(st.text(alphabet=ALPHABET, max_size=3))
    values = [draw(st.text(alphabet=ALPHABET, min_size=1, max_size=8)) for _ in names]
    template, room = first, first
    for name, value, after in zip(names, values, [*between, last], strict=True):
        template += f"{{{name}}}{after}"
        room += f"{value}{after}"
    return template, names, room


@given(templates(), valid_rooms)
def test_outbound_then_inbound_returns_the_same_room(
    template: tuple[str, list[str], str], other_room: str
) -> None:
    room_template, names, room = template
    topic_template = "/".join(["dev", *(f"{{{name}}}" for name in names), "cmd"])
    rule = Rule(
        name="mirror",
        direction="both",
        topic=topic_template,
        room=room_template,
        publish_to=topic_template,
    )
    for candidate in (room, other_room):
        topic = rule.outbound_topic(candidate)
        if candidate == room and is_valid_room(room):
            assert topic is not None
        if topic is not None:
            assert not set(topic) & {"+", "#", "\x00"}
            assert not topic.startswith("$")
            assert rule.match(topic) == Inbound(rule=rule, room=candidate, sender=None)


# Validation: every error names the rule and says what is wrong.

BASE: dict[str, Any] = {"name": "bad", "topic": "a/{x}", "room": "{x}"}
OUT: dict[str, Any] = {"name": "bad", "direction": "out", "room": "{x}", "publish_to": "o/{x}"}
BOTH: dict[str, Any] = {**BASE, "direction": "both", "publish_to": "o/{x}"}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({**BASE, "colour": "red"}, "unknown keys ['colour']"),
        ({"name": "bad", "topic": "a"}, "room is missing"),
        ({**BASE, "topic": 5}, "topic must be a string or null, not 5"),
        ({**BASE, "room": None}, "room must be a string, not None"),
        ({**BASE, "sender": ["x"]}, "sender must be a string or null"),
        ({**BASE, "retain": "yes"}, "retain must be true or false"),
        ({**BASE, "qos": "1"}, "qos must be 0, 1 or 2, not '1'"),
        ({**BASE, "qos": True}, "qos must be 0, 1 or 2, not True"),
        ({**BASE, "qos": 3}, "qos must be 0, 1 or 2, not 3"),
        ({**BASE, "direction": "sideways"}, "direction 'sideways' must be 'in', 'out' or 'both'"),
        ({**BASE, "codec": 1}, "codec must be a string"),
        ({**BASE, "codec": "xml"}, "unknown codec 'xml'"),
        ({**BASE, "topic": None}, "topic is required by direction 'in'"),
        ({**OUT, "topic": "a/{x}"}, "topic has no use in direction 'out'"),
        ({**OUT, "sender": "me"}, "sender has no use in direction 'out'"),
        ({**OUT, "publish_to": None}, "publish_to is required by direction 'out'"),
        ({**BOTH, "publish_to": None}, "publish_to is required by direction 'both'"),
        ({**BASE, "publish_to": "o/{x}"}, "publish_to has no use in direction 'in'"),
        ({**BASE, "topic": ""}, "topic is empty"),
        ({**BASE, "topic": "a/{x}y"}, "a {name} capture must be a whole level"),
        ({**BASE, "topic": "a/{x"}, "a {name} capture must be a whole level"),
        ({**BASE, "topic": "a/{x}/#/b"}, "'#' must be the last level"),
        ({**BASE, "topic": "a/{x}/b+"}, "'+' and '#' must be a whole level"),
        ({**BASE, "topic": "a/{x}/b#"}, "'+' and '#' must be a whole level"),
        ({**BASE, "topic": "a/{x}/{x}"}, "captures {x} twice"),
        ({**BASE, "topic": "a/{x}/\x00"}, "topic contains NUL"),
        ({**BASE, "topic": "$share/g/{x}"}, "starts with '$'"),
        ({**BASE, "topic": "$SYS/{x}"}, "starts with '$'"),
        ({**BASE, "topic": "a/{}"}, "empty placeholder {}"),
        ({**BASE, "topic": "a/{1x}"}, "placeholder {1x} is not a name"),
        ({**BASE, "room": "{y}"}, "unknown placeholder {y}"),
        ({**BASE, "room": "room {x}"}, "characters outside [A-Za-z0-9_.-]"),
        ({**BASE, "room": "{x}/b"}, "characters outside [A-Za-z0-9_.-]"),
        ({**BASE, "room": ".{x}"}, "starts with '.'"),
        ({**BASE, "room": "-{x}"}, "starts with '-'"),
        ({**BASE, "room": "r" * 65 + "{x}"}, "longer than 64 characters"),
        ({**BASE, "room": "r" * 65}, "longer than 64 characters"),
        ({**BASE, "topic": "a/{x}/{y}", "room": "{x}{y}"}, "adjacent placeholders"),
        ({**OUT, "room": "{x}{y}"}, "adjacent placeholders"),
        ({**BASE, "room": ""}, "room is empty"),
        ({**BASE, "room": "{x"}, "unmatched brace"),
        ({**BASE, "sender": "{y}"}, "sender '{y}' has unknown placeholder {y}"),
        ({**BASE, "sender": ""}, "sender is empty"),
        ({**BOTH, "publish_to": "o/+/{x}"}, "contains '+', '#' or NUL"),
        ({**OUT, "publish_to": "o/{x}/#"}, "contains '+', '#' or NUL"),
        ({**OUT, "publish_to": "o/{x}\x00"}, "contains '+', '#' or NUL"),
        ({**OUT, "publish_to": "$SYS/{x}"}, "publish_to '$SYS/{x}' starts with '$'"),
        ({**OUT, "publish_to": "o/{y}"}, "publish_to 'o/{y}' has unknown placeholder {y}"),
        ({**BOTH, "publish_to": "o/{y}"}, "publish_to 'o/{y}' has unknown placeholder {y}"),
        ({**OUT, "publish_to": "o/{}"}, "empty placeholder {}"),
        ({**OUT, "publish_to": ""}, "publish_to is empty"),
    ],
)
def test_invalid_rules_are_refused_naming_the_rule(raw: dict[str, Any], message: str) -> None:
    good = {"name": "good", "topic": "g/{x}", "room": "{x}"}
    with pytest.raises(ImproperlyConfigured) as refused:
        parse_rules([good, raw])
    assert str(refused.value).startswith("bridge rule 'bad': ")
    assert message in str(refused.value)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"topic": "a", "room": "r"}, "bridge rule #1: name must be"),
        ({"name": "a b", "topic": "a", "room": "r"}, "bridge rule #1: name must be"),
        ({"name": "x" * 65, "topic": "a", "room": "r"}, "bridge rule #1: name must be"),
        ({"name": 7, "topic": "a", "room": "r"}, "bridge rule #1: name must be"),
        ("rooms/#", "bridge rule #1: must be an object"),
        ({"name": "ok", "topic": "a", "room": "r"}, "bridge rule 'ok': the name is used twice"),
    ],
)
def test_rules_without_a_usable_name_are_refused_by_index(raw: Any, message: str) -> None:
    with pytest.raises(ImproperlyConfigured, match="^" + message.replace("(", r"\(")):
        parse_rules([{"name": "ok", "topic": "b", "room": "r"}, raw])


@pytest.mark.parametrize("raw", [None, {}, [], "[]", {"name": "x"}])
def test_the_rules_must_be_a_list_of_rules(raw: Any) -> None:
    with pytest.raises(ImproperlyConfigured, match="non-empty list"):
        parse_rules(raw)


def test_rules_built_directly_are_validated_too() -> None:
    with pytest.raises(ImproperlyConfigured, match=r"^bridge rule 'x': topic is empty"):
        Rule(name="x", topic="", room="r")
    with pytest.raises(ImproperlyConfigured, match=r"^bridge rule 'a b': name must be"):
        Rule(name="a b", topic="t", room="r")
    rule = Rule(name="x", topic="t", room="r")
    with pytest.raises(ImproperlyConfigured, match=r"^bridge rule 'x': the name is used twice"):
        RuleSet((rule, rule))


# load_rules: BRIDGE_RULES is unset, inline JSON or a file.

CUSTOM = [{"name": "custom", "topic": "t/{room}", "room": "{room}"}]


@pytest.mark.parametrize("value", [None, ""])
def test_unset_bridge_rules_mean_the_defaults(value: str | None) -> None:
    assert load_rules(value) is DEFAULT_RULES


def test_bridge_rules_inline() -> None:
    rules = load_rules(" " + json.dumps(CUSTOM))
    assert routes(rules, "t/kitchen") == [("custom", "kitchen", None)]
    assert rules == parse_rules(CUSTOM)


def test_bridge_rules_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "rules.json"
    path.write_text(json.dumps(CUSTOM), encoding="utf-8")
    assert load_rules(str(path)) == parse_rules(CUSTOM)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "BRIDGE_RULES file '{path}' cannot be read"),
        (b"\xff\xfe", "BRIDGE_RULES file '{path}' cannot be read"),
        (b"rules: []", "BRIDGE_RULES file '{path}' is not valid JSON"),
        (b'[{"name": "x", "topic": "a", "room": "r", "qos": NaN}]', "is not valid JSON"),
        (b'[{"name": "x", "room": "r"}]', "bridge rule 'x': topic is required"),
    ],
)
def test_bad_bridge_rules_files_fail_naming_bridge_rules(
    tmp_path: Path, content: bytes | None, message: str
) -> None:
    path = tmp_path / "rules.json"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ImproperlyConfigured) as refused:
        load_rules(str(path))
    assert message.format(path=path) in str(refused.value)
    assert "BRIDGE_RULES" in str(refused.value)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("[{", "BRIDGE_RULES is not valid JSON"),
        ('[{"name": "x", "room": "r"}]', "bridge rule 'x': topic is required"),
    ],
)
def test_bad_inline_bridge_rules_fail_naming_bridge_rules(value: str, message: str) -> None:
    with pytest.raises(ImproperlyConfigured) as refused:
        load_rules(value)
    assert str(refused.value).startswith(message)
    assert "BRIDGE_RULES" in str(refused.value)


def test_settings_hold_the_rules_of_bridge_rules() -> None:
    assert load_rules(os.environ.get("BRIDGE_RULES")) == django_settings.BRIDGE_RULES


# manage.py bridge_rules


def bridge_rules(*args: str, rules: RuleSet = DEFAULT_RULES) -> list[str]:
    out = io.StringIO()
    with override_settings(BRIDGE_RULES=rules):
        call_command("bridge_rules", *args, stdout=out)
    return out.getvalue().splitlines()


def test_the_command_prints_the_rules_in_force() -> None:
    header, *rows = bridge_rules()
    assert header.split() == [
        "name", "direction", "subscription", "topic", "room", "sender", "publish_to",
        "qos", "retain", "codec", "presence",
    ]  # fmt: skip
    assert [row.split() for row in rows] == [
        ["device-status", "in", "rooms/+/+/status", "rooms/{room}/{sender}/status", "{room}",
         "{sender}", "-", "1", "no", "json", "yes"],
        ["device-in", "in", "rooms/+/+/#", "rooms/{room}/{sender}/#", "{room}", "{sender}", "-",
         "1", "no", "json", "no"],
        ["room-in", "in", "rooms/+", "rooms/{room}", "{room}", "-", "-", "1", "no", "json", "no"],
        ["gateway-out", "out", "-", "-", "{room}", "-", "rooms/{room}/gateway", "1", "no", "json",
         "no"],
    ]  # fmt: skip


def test_the_command_routes_topics() -> None:
    rules = rules_of(
        {"name": "by-site", "topic": "s/{site}/{kind}", "room": "site-{site}", "sender": "{kind}"},
        {"name": "by-kind", "topic": "s/{site}/{kind}", "room": "kind-{kind}", "codec": "text"},
    )
    assert bridge_rules("--topic", "s/1/temp", "--topic", "elsewhere", rules=rules) == [
        "topic s/1/temp",
        "  by-site: room site-1, sender temp (codec json)",
        "  by-kind: room kind-temp, sender none (codec text)",
        "topic elsewhere",
        "  no rule: dropped (counted)",
    ]


def test_the_command_routes_rooms() -> None:
    rules = rules_of(
        {**SITES, "retain": True},
        {"name": "all", "direction": "out", "room": "{r}", "publish_to": "all/{r}", "qos": 0},
    )
    assert bridge_rules("--room", "site-7", "--room", "kitchen", rules=rules) == [
        "room site-7",
        "  sites: sites/7/commands (qos 1, retained)",
        "  all: all/site-7 (qos 0)",
        "room kitchen",
        "  all: all/kitchen (qos 0)",
    ]
    assert bridge_rules("--room", "kitchen", rules=rules_of(SITES)) == [
        "room kitchen",
        "  not published",
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--room", ".x"], "invalid room name '.x'"),
        (["--room", "a/b"], "invalid room name 'a/b'"),
        (["--room", "kitchen", "--room", ""], "invalid room name '': empty"),
        (["--topic", "rooms/+"], "invalid topic 'rooms/+'"),
    ],
)
def test_the_command_refuses_bad_names(args: list[str], message: str) -> None:
    with pytest.raises(CommandError, match=re.escape(message)):
        bridge_rules(*args)


@pytest.mark.parametrize(
    ("wider", "narrower", "expected"),
    [
        ("a/#", "a", True),
        ("a/#", "a/b/c", True),
        ("a/+", "a/b", True),
        ("a/+", "a/+", True),
        ("+/+/#", "rooms/+/+/status", True),
        ("a/+", "a/#", False),
        ("a/b", "a/+", False),
        ("a/+", "a/b/c", False),
        ("a/b", "a/c", False),
        ("#", "x/y", True),
    ],
)
def test_covers_follows_mqtt_matching(wider: str, narrower: str, expected: bool) -> None:
    assert covers(wider, narrower) is expected


def test_a_covered_filter_gives_its_qos_to_the_wider_one() -> None:
    rules = parse_rules(
        [
            {"name": "status", "topic": "d/{id}/status", "room": "r-{id}", "qos": 2},
            {"name": "all", "topic": "d/#", "room": "all", "qos": 0},
        ]
    )
    assert rules.subscriptions() == [("d/#", 2)]


# Any topic at all: what a broker could deliver, and what it could not.

EDGE_RULES = rules_of(
    SITES,
    {"name": "dev", "topic": "d/{site}/{device}/#", "room": "{site}", "sender": "dev-{device}"},
    {"name": "everything", "topic": "#", "room": "all"},
)
ODD_LEVELS = ["rooms", "kitchen", "sites", "d", "telemetry", "status", "", "+", "#", "$SYS"]
ODD_LEVELS += ["$", "\x00", "\ud800", "x y", "é", ".x", "-x", "a" * 65, "k" * 64]
any_topics = st.text(alphabet=st.characters()) | st.lists(
    st.sampled_from(ODD_LEVELS) | valid_rooms, min_size=1, max_size=8
).map("/".join)


def check_inbound(rules: RuleSet, topic: str) -> list[Inbound]:
    found = rules.inbound(topic)
    assert len({inbound.room for inbound in found}) == len(found)
    for inbound in found:
        assert inbound.rule in rules.rules
        assert is_valid_room(inbound.room)
        assert inbound.sender is None or (inbound.sender and "/" not in inbound.sender)
        assert reference_match(inbound.rule.subscription(), topic)
    get_codec(rules.codec_for(topic))  # a registered codec, whatever the topic
    return found


@settings(max_examples=300, deadline=None)
@given(any_topics)
def test_any_topic_routes_only_to_valid_rooms_of_matching_rules(topic: str) -> None:
    for rules in (DEFAULT_RULES, EDGE_RULES):
        check_inbound(rules, topic)
    # "#" takes every topic but the broker's own ($SYS/...), and nothing else takes those.
    reached = [inbound.room for inbound in EDGE_RULES.inbound(topic)]
    assert ("all" in reached) is not topic.startswith("$")
    if topic.startswith("$"):
        assert reached == []


@pytest.mark.parametrize(
    ("topic", "rooms"),
    [
        ("rooms/" + "x" * 100_000, ["all"]),
        ("/" * 100_000, ["all"]),
        ("rooms/kitchen/" + "a/" * 50_000 + "status", ["kitchen", "all"]),
        ("d/site/" + "+/" * 50_000, ["site", "all"]),
        ("#" * 100_000, ["all"]),
        ("$" + "/" * 100_000, []),
        ("sites/\x00/dev/telemetry", ["all"]),
        ("sites/\ud800/dev/telemetry", ["all"]),
        ("", ["all"]),
    ],
)
def test_long_and_odd_topics_route_without_trouble(topic: str, rooms: list[str]) -> None:
    routed = check_inbound(DEFAULT_RULES, topic) + check_inbound(EDGE_RULES, topic)
    assert [inbound.room for inbound in routed] == rooms


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters()) | valid_rooms)
def test_any_room_name_publishes_only_to_plain_topics(room: str) -> None:
    rules = rules_of(
        SITES,
        {"name": "floors", "direction": "out", "room": "{b}.{f}", "publish_to": "b/{b}/f/{f}"},
    )
    for ruleset in (DEFAULT_RULES, rules):
        published = ruleset.outbound(room)
        assert not published or is_valid_room(room)
        for _, topic in published:
            assert not set(topic) & {"+", "#", "\x00"}
            assert not topic.startswith("$")
