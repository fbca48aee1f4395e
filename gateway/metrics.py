"""Process-wide counters: every message the gateway drops or refuses moves one.

Counters are keyed by a name and a reason, and read by the metrics endpoint and the tests.
"""

import logging
import threading
from collections import Counter

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_counts: Counter[tuple[str, str]] = Counter()


def inc(name: str, reason: str = "", amount: int = 1) -> None:
    """Add ``amount`` to the counter ``name`` for ``reason``."""
    with _lock:
        _counts[name, reason] += amount


def get(name: str, reason: str = "") -> int:
    """The current value of a counter."""
    with _lock:
        return _counts[name, reason]


def snapshot() -> dict[tuple[str, str], int]:
    """A copy of every counter."""
    with _lock:
        return dict(_counts)


def dropped(reason: str, detail: str) -> None:
    """Count a dropped message and say why in the log."""
    inc("messages_dropped", reason)
    logger.warning("message dropped (%s): %s", reason, detail)


class ChannelLayerDropCounter(logging.Filter):
    """Counts the messages channels-redis drops when a channel is over capacity.

    channels-redis drops a group message for every member channel that is full and only says
    so in an INFO log record (``"%s of %s channels over capacity in group %s"``). Attached to
    the ``channels_redis.core`` logger, this filter turns those records into counter increments
    and raises them to WARNING, so no drop goes unseen.
    """

    OVER_CAPACITY = "channels over capacity in group"

    def filter(self, record: logging.LogRecord) -> bool:
        counted = getattr(record, "gateway_counted", False)  # a second copy of this filter
        if not counted and self.OVER_CAPACITY in str(record.msg) and isinstance(record.args, tuple):
            dropped_count = record.args[0]
            if isinstance(dropped_count, int):
                inc("messages_dropped", "channel_full", dropped_count)
                record.levelno, record.levelname = logging.WARNING, "WARNING"
                record.msg = "message dropped (channel_full): " + str(record.msg)
                record.gateway_counted = True
        return True
