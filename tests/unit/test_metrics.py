"""Counting what channels-redis drops silently."""

import logging

import pytest

from gateway import metrics


def test_group_send_drops_move_the_counter_and_are_raised_to_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    logger = logging.getLogger("channels_redis.core")
    counter, twin = metrics.ChannelLayerDropCounter(), metrics.ChannelLayerDropCounter()
    logger.addFilter(counter)
    logger.addFilter(twin)  # logging configured twice must not count twice
    before = metrics.get("messages_dropped", "channel_full")
    try:
        with caplog.at_level(logging.INFO, logger="channels_redis.core"):
            # The record channels-redis writes when group members are full: here the event
            # carried 4 messages, and 3 members could not take it.
            carried = metrics.MESSAGES_PER_EVENT.set(4)
            logger.info("%s of %s channels over capacity in group %s", 3, 5, "room.kitchen")
            metrics.MESSAGES_PER_EVENT.reset(carried)
            logger.info("an unrelated message %s", 1)
    finally:
        logger.removeFilter(counter)
        logger.removeFilter(twin)
    assert metrics.get("messages_dropped", "channel_full") == before + 12
    levels = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert levels[0] == (
        "WARNING",
        "message dropped (channel_full): 12 messages; "
        "3 of 5 channels over capacity in group room.kitchen",
    )
    assert levels[1] == ("INFO", "an unrelated message 1")
