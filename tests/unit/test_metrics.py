"""Counting what channels-redis drops silently."""

import logging

import pytest

from gateway import metrics


@pytest.fixture(autouse=True)
def _fresh_drop_log(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with no drop logged lately (the log is throttled per reason)."""
    monkeypatch.setattr(metrics, "_drops_logged", {})


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


def test_a_flood_of_drops_logs_a_line_per_reason_now_and_then_but_counts_every_one(
    caplog: pytest.LogCaptureFixture,
) -> None:
    before = metrics.get("messages_dropped", "no_rule")
    with caplog.at_level(logging.WARNING, logger="gateway.metrics"):
        for n in range(1000):
            metrics.dropped("no_rule", f"topic 'spam/{n}'")
        metrics.dropped("payload_too_big", "another reason is logged on its own")
    assert metrics.get("messages_dropped", "no_rule") == before + 1000
    lines = [record.getMessage() for record in caplog.records]
    assert lines == [
        "message dropped (no_rule): topic 'spam/0'",
        "message dropped (payload_too_big): another reason is logged on its own",
    ]


def test_what_a_stranger_sent_is_cut_short_and_escaped_in_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="gateway.metrics"):
        metrics.dropped("no_rule", "topic rooms/x\n2026-12-01 FAKE LOG LINE\x1b[31m" + "y" * 5000)
    (line,) = [record.getMessage() for record in caplog.records]
    assert "\n" not in line
    assert "\x1b" not in line
    assert "\\n2026-12-01 FAKE LOG LINE" in line
    assert len(line) < 400
