"""Default topic rules: which room a device topic feeds, and where room messages go."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridges.topics import Route, outbound_topic, route_inbound
from tests.unit.test_rooms import valid_rooms


@pytest.mark.parametrize(
    ("topic", "route"),
    [
        ("rooms/kitchen", Route("kitchen", None)),
        ("rooms/kitchen/", Route("kitchen", None)),
        ("rooms/kitchen/sensor-1", Route("kitchen", "sensor-1")),
        ("rooms/kitchen/sensor-1/temp/c", Route("kitchen", "sensor-1")),
        ("rooms/kitchen/gateway", Route("kitchen", "gateway")),
    ],
)
def test_device_topics_lead_to_their_room(topic: str, route: Route) -> None:
    assert route_inbound(topic) == route


@pytest.mark.parametrize(
    "topic",
    [
        "rooms",
        "rooms/",
        "room/kitchen",
        "Rooms/kitchen",
        "other/rooms/kitchen",
        "rooms/.x/y",
        "rooms/" + "x" * 65,
        "rooms/a b",
        "/rooms/kitchen",
    ],
)
def test_topics_naming_no_valid_room_lead_nowhere(topic: str) -> None:
    assert route_inbound(topic) is None


@given(valid_rooms, st.lists(st.text(alphabet="abc-_1", min_size=1, max_size=8), max_size=3))
def test_routing_recovers_the_room_of_any_device_topic(room: str, levels: list[str]) -> None:
    route = route_inbound("/".join(["rooms", room, *levels]))
    assert route == Route(room, levels[0] if levels else None)


@given(valid_rooms)
def test_outbound_topic_routes_back_to_the_same_room(room: str) -> None:
    topic = outbound_topic(room)
    assert topic == f"rooms/{room}/gateway"
    assert route_inbound(topic) == Route(room, "gateway")
    assert not set(topic) & {"+", "#", "\x00"}
