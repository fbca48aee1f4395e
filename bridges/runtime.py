"""The bridge this process runs, for the channel consumer to find.

The ``mqtt-bridge`` consumer is created by the worker when its first channel message arrives,
long after the bridge connected at start-up; this is where the two meet.
"""

from bridges.bridge import Bridge

_current: Bridge | None = None


def set_bridge(bridge: Bridge | None) -> None:
    """Make ``bridge`` the one this process runs (None when it stops)."""
    global _current  # noqa: PLW0603 - one bridge per process, by design
    _current = bridge


def current_bridge() -> Bridge | None:
    """The bridge this process runs, if any."""
    return _current
