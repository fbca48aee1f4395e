"""The gateway's own settings: read once from the environment, frozen, validated at start-up."""

import re
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

_GATEWAY_ID_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,31}")


@dataclass(frozen=True, kw_only=True)
class GatewaySettings:
    """Settings shared by every edge.

    Attributes:
        gateway_id: names this gateway on the broker; the MQTT client id and loop prevention
            derive from it (``GATEWAY_ID``).
        max_frame_bytes: largest WebSocket frame accepted; larger ones close with 1009
            (``GATEWAY_MAX_FRAME_BYTES``).
        max_payload_bytes: largest device payload handed on to a room; larger ones are dropped
            and counted (``GATEWAY_MAX_PAYLOAD_BYTES``).
        retained_max_topics: retained states kept per room; a retained message on a further
            topic is delivered but not kept (``RETAINED_MAX_TOPICS``).
        history_max_messages: messages kept per room (``HISTORY_MAX_MESSAGES``).
        history_max_age: how long messages are kept (``HISTORY_MAX_AGE_DAYS``).
        history_room_bytes: bytes of history kept per room in the database, as encoded
            (``HISTORY_ROOM_BYTES``); the oldest messages go first.
        history_window_bytes: bytes of a room's recent window in Redis (``HISTORY_WINDOW_BYTES``);
            what falls out of it is still read from the database.
        presence_ttl: seconds a crashed process's browsers stay present
            (``PRESENCE_TTL_SECONDS``).
        presence_list_max: members a room may have for its sockets to be sent the list and
            each change; above it they get the count (``GATEWAY_PRESENCE_LIST_MAX``).
        presence_interval: seconds over which joins and leaves are gathered into one frame
            (``GATEWAY_PRESENCE_INTERVAL``).
        presence_count_interval: seconds between count frames at most, in a room above
            ``presence_list_max`` (``GATEWAY_PRESENCE_COUNT_INTERVAL``).
        gc_thresholds: the cyclic garbage collector's three thresholds in every gateway
            process (``GATEWAY_GC_THRESHOLDS``). The first is raised from Python's 700: a
            socket's state lives as long as the socket, and with the default each burst of
            handshakes promotes it to the oldest generation early, where every full collection
            walks all of it again (a pause of a third of a second at 5,000 sockets).
    """

    gateway_id: str = "gateway"
    max_frame_bytes: int = 64 * 1024
    max_payload_bytes: int = 64 * 1024
    retained_max_topics: int = 100
    history_max_messages: int = 10_000
    history_max_age: timedelta = timedelta(days=30)
    history_room_bytes: int = 64 << 20
    history_window_bytes: int = 4 << 20
    presence_ttl: float = 30.0
    presence_list_max: int = 100
    presence_interval: float = 0.25
    presence_count_interval: float = 2.0
    gc_thresholds: tuple[int, ...] = (50_000, 20, 10)

    def __post_init__(self) -> None:
        if not _GATEWAY_ID_RE.fullmatch(self.gateway_id):
            raise ImproperlyConfigured(
                f"GATEWAY_ID={self.gateway_id!r} is invalid: use 1-32 letters, digits, '_', '.'"
                " or '-', not starting with '.' or '-'"
            )
        if not 1024 <= self.max_frame_bytes <= 16 * 1024 * 1024:
            raise ImproperlyConfigured(
                f"GATEWAY_MAX_FRAME_BYTES={self.max_frame_bytes} is out of range (1024-16777216)"
            )
        if not 1024 <= self.max_payload_bytes <= 16 * 1024 * 1024:
            raise ImproperlyConfigured(
                f"GATEWAY_MAX_PAYLOAD_BYTES={self.max_payload_bytes}"
                " is out of range (1024-16777216)"
            )
        if not 1 <= self.retained_max_topics <= 100_000:
            raise ImproperlyConfigured(
                f"RETAINED_MAX_TOPICS={self.retained_max_topics} is out of range (1-100000)"
            )
        if not 1 <= self.history_max_messages <= 100_000_000:
            raise ImproperlyConfigured(
                f"HISTORY_MAX_MESSAGES={self.history_max_messages} is out of range (1-100000000)"
            )
        for name, value in (
            ("HISTORY_ROOM_BYTES", self.history_room_bytes),
            ("HISTORY_WINDOW_BYTES", self.history_window_bytes),
        ):
            if not 65_536 <= value <= 1 << 40:
                raise ImproperlyConfigured(f"{name}={value} is out of range (65536-{1 << 40})")
        if not 1 <= self.presence_ttl <= 3600:
            raise ImproperlyConfigured(
                f"PRESENCE_TTL_SECONDS={self.presence_ttl} is out of range (1-3600)"
            )
        if not 0 <= self.presence_list_max <= 1000:
            raise ImproperlyConfigured(
                f"GATEWAY_PRESENCE_LIST_MAX={self.presence_list_max} is out of range (0-1000)"
            )
        for setting, seconds, top in (
            ("GATEWAY_PRESENCE_INTERVAL", self.presence_interval, 10),
            ("GATEWAY_PRESENCE_COUNT_INTERVAL", self.presence_count_interval, 60),
        ):
            if not 0.01 <= seconds <= top:  # also refuses nan
                raise ImproperlyConfigured(f"{setting}={seconds} is out of range (0.01-{top})")
        _check_gc_thresholds(self.gc_thresholds)
        if not timedelta(hours=1) <= self.history_max_age <= timedelta(days=36_500):
            raise ImproperlyConfigured(
                f"HISTORY_MAX_AGE_DAYS={self.history_max_age.days} is out of range (0.05-36500)"
            )


def _check_gc_thresholds(thresholds: tuple[int, ...]) -> None:
    if len(thresholds) != 3 or not (
        100 <= thresholds[0] <= 10_000_000 and all(1 <= t <= 10_000 for t in thresholds[1:])
    ):
        raise ImproperlyConfigured(
            f"GATEWAY_GC_THRESHOLDS={','.join(map(str, thresholds))} is invalid:"
            " give three numbers, the first 100-10000000, the others 1-10000"
        )


def gateway_settings() -> GatewaySettings:
    """The settings in force (``settings.GATEWAY``)."""
    value = getattr(settings, "GATEWAY", None)
    return value if isinstance(value, GatewaySettings) else GatewaySettings()
