"""The round trips of `test_rooms`, on the pub/sub channel layer (``CHANNEL_LAYER=pubsub``).

Two bridge workers: with this layer every worker reads every outbound event, so this also
shows that a browser's message reaches MQTT once, not once per worker.
"""

from typing import Any

import pytest

from tests.e2e.test_rooms import (
    test_a_burst_across_rooms_reaches_each_room_in_order_and_no_other,
    test_a_welcome_larger_than_the_frame_limit_still_arrives,
    test_browser_message_reaches_the_room_and_mqtt_once_without_echo,
    test_device_message_reaches_every_browser_in_its_room_and_no_other,
    test_send_message_reaches_browsers_and_mqtt,
)

__all__ = [
    "test_a_burst_across_rooms_reaches_each_room_in_order_and_no_other",
    "test_a_welcome_larger_than_the_frame_limit_still_arrives",
    "test_browser_message_reaches_the_room_and_mqtt_once_without_echo",
    "test_device_message_reaches_every_browser_in_its_room_and_no_other",
    "test_send_message_reaches_browsers_and_mqtt",
]


@pytest.fixture(scope="module")
def gateway_options() -> dict[str, Any]:
    """daphne and two bridge workers on the pub/sub layer."""
    return {"workers": 2, "CHANNEL_LAYER": "pubsub"}
