"""Drops are counted, and logged without flooding the log."""

import logging

import pytest

from gateway import metrics


@pytest.fixture(autouse=True)
def _fresh_drop_log(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with no drop logged lately (the log is throttled per reason)."""
    monkeypatch.setattr(metrics, "_drops_logged", {})


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
