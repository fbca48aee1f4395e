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
