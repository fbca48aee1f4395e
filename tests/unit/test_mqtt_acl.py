"""The MQTT decision: every row of the decision table, and the pure parts of it."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridges.rules import DEFAULT_RULES, parse_rules
from gateway.access import mqtt_access, mqtt_identity
from gateway.mqtt_acl import (
    AclEntry,
    Identity,
    RoomAccess,
    acl,
    covers,
    decide,
    is_valid_topic,
    matches,
)
from tests.support.decision_table import ROWS, Row, make_world

BRIDGE_USER = "gateway-admin"


def ask(row: Row) -> bool:
    name = BRIDGE_USER if row.who == "bridge" else row.who
    identity = mqtt_identity(name, bridge_username=BRIDGE_USER)
    access = mqtt_access(identity, anonymous_mqtt=True)
    entries = acl(identity, access, DEFAULT_RULES)
    return decide(identity, row.action, row.topic, entries, connect=access.connect)  # type: ignore[arg-type]


@pytest.mark.django_db
@pytest.mark.parametrize("row", ROWS, ids=str)
def test_the_decision_answers_every_row_of_the_table(row: Row) -> None:
    make_world()
    assert ask(row) is row.allow


@pytest.mark.django_db
def test_anonymous_mqtt_off_gives_anonymous_clients_nothing() -> None:
    make_world()
    identity = Identity.anonymous()
    access = mqtt_access(identity, anonymous_mqtt=False)
    entries = acl(identity, access, DEFAULT_RULES)
    assert entries == []
    for action, topic in (
        ("connect", ""),
        ("subscribe", "rooms/open/#"),
        ("publish", "rooms/open"),
    ):
        assert not decide(identity, action, topic, entries, connect=access.connect)  # type: ignore[arg-type]


def test_no_two_entries_of_one_priority_disagree_on_a_topic() -> None:
    """Brokers order entries of equal priority as they like: ties must not matter."""
    access = RoomAccess(
        default="write",
        rooms={"plant": "write", "vault": "none", "lobby": "read"},
        connect=True,
        devices=frozenset({"pump-7", "pump-8"}),
    )
    for identity in (Identity("device", "pump-7"), Identity.anonymous()):
        entries = acl(identity, access, DEFAULT_RULES)
        for a in entries:
            for b in entries:
                same = a.priority == b.priority and a.action == b.action
                if same and a.allow != b.allow:
                    assert not covers(a.topic, b.topic), (a, b)
                    assert not covers(b.topic, a.topic), (a, b)


def test_custom_rules_map_a_device_to_its_own_level() -> None:
    rules = parse_rules(
        [
            {
                "name": "telemetry",
                "topic": "sites/{site}/{device}/telemetry",
                "room": "site-{site}",
                "sender": "{device}",
            },
            {
                "name": "commands",
                "direction": "out",
                "room": "site-{site}",
                "publish_to": "sites/{site}/commands",
            },
        ]
    )
    device = Identity("device", "pump-3")
    entries = acl(device, RoomAccess(rooms={"site-north": "write"}, connect=True), rules)
    assert decide(device, "publish", "sites/north/pump-3/telemetry", entries, connect=True)
    assert not decide(device, "publish", "sites/north/pump-4/telemetry", entries, connect=True)
    assert not decide(device, "publish", "sites/south/pump-3/telemetry", entries, connect=True)
    assert not decide(device, "publish", "sites/north/commands", entries, connect=True)
    assert decide(device, "receive", "sites/north/commands", entries, connect=True)
    assert not decide(device, "receive", "sites/south/commands", entries, connect=True)


def test_the_bridge_may_do_anything_but_others_never_touch_control_topics() -> None:
    bridge = Identity("bridge", BRIDGE_USER)
    entries = acl(bridge, RoomAccess(), DEFAULT_RULES)
    assert decide(bridge, "publish", "$CONTROL/dynamic-security/v1", entries, connect=False)
    assert decide(bridge, "subscribe", "rooms/#", entries, connect=False)


def test_invalid_topics_are_denied_whatever_the_acl_says() -> None:
    device = Identity("device", "d")
    allow_all = [AclEntry(1, "publish", "#", True), AclEntry(1, "subscribe", "#", True)]
    for topic in ("", "rooms/a/+", "rooms/#", "a\x00b"):
        assert not decide(device, "publish", topic, allow_all, connect=True)
    for topic in ("", "rooms/#/x", "rooms/a+", "a\x00b"):
        assert not decide(device, "subscribe", topic, allow_all, connect=True)


@pytest.mark.parametrize(
    ("pattern", "topic", "expected"),
    [
        ("rooms/#", "rooms", True),
        ("rooms/+/#", "rooms/a", True),
        ("rooms/+/#", "rooms", False),
        ("rooms/+", "rooms/a/b", False),
        ("#", "$SYS/x", False),
        ("+/x", "$SYS/x", False),
        ("$SYS/#", "$SYS/x", True),
    ],
)
def test_matching_follows_mqtt(pattern: str, topic: str, expected: bool) -> None:
    assert matches(pattern, topic) is expected


_filter = st.lists(st.sampled_from(["a", "b", "+"]), min_size=1, max_size=4).map("/".join)
_topic = st.lists(st.sampled_from(["a", "b"]), min_size=1, max_size=5).map("/".join)


@given(_filter, _filter, st.booleans(), st.booleans(), _topic)
def test_a_filter_that_covers_another_matches_every_topic_it_matches(
    wide: str, narrow: str, wide_multi: bool, narrow_multi: bool, topic: str
) -> None:
    wide += "/#" if wide_multi else ""
    narrow += "/#" if narrow_multi else ""
    if covers(wide, narrow) and matches(narrow, topic):
        assert matches(wide, topic)


def test_topic_validity() -> None:
    assert is_valid_topic("rooms/a/#", wildcards=True)
    assert not is_valid_topic("rooms/a/#", wildcards=False)
    assert not is_valid_topic("rooms/#/a", wildcards=True)
