"""What the web processes know of the MQTT bridge: the contract between the bridge and ``/readyz``.

A bridge worker is a process of its own, so it reports through Redis: every few seconds, and at
once when its broker connection comes or goes, it writes ``gateway:bridge:<GATEWAY_ID>:<client
id>`` with its broker state and metrics, expiring after `TTL_SECONDS`, so a worker that died
disappears on its own. Its client id is also in the set ``gateway:bridges:<GATEWAY_ID>``, the
index readers use: what a read costs does not grow with the rest of Redis's keys. A bridge that
runs inside the web process (``rungateway``) registers itself here instead.
"""

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypedDict

from gateway.conf import gateway_settings
from gateway.metrics import ExportedState
from gateway.shared import redis_client

TTL_SECONDS = 10  # several missed beats: the worker is gone, not just slow
KEY_PREFIX = "gateway:bridge:"
INDEX_PREFIX = "gateway:bridges:"
INDEX_TTL_SECONDS = 24 * 3600  # renewed by every beat: an index nobody writes goes


class Heartbeat(TypedDict):
    """What a bridge worker says about itself in Redis."""

    client_id: str
    broker: str  # "connected" or "disconnected"
    broker_url: str
    ts: float
    metrics: ExportedState


def heartbeat_key(client_id: str) -> str:
    """The Redis key of the heartbeat of the bridge with MQTT client id ``client_id``."""
    return f"{KEY_PREFIX}{gateway_settings().gateway_id}:{client_id}"


def index_key() -> str:
    """The Redis set of the client ids of this gateway's bridge workers."""
    return f"{INDEX_PREFIX}{gateway_settings().gateway_id}"


def parse_heartbeat(raw: Any) -> Heartbeat | None:
    """A heartbeat read back from Redis, or None when it is not one."""
    try:
        value = json.loads(raw)
    except (TypeError, ValueError):
        return None
    if not isinstance(value, dict) or not isinstance(value.get("client_id"), str):
        return None
    if not isinstance(value.get("metrics"), dict):
        value["metrics"] = {}
    return value  # type: ignore[return-value]


async def read_heartbeats() -> list[Heartbeat]:
    """The heartbeats of this gateway's live bridge workers, by client id (two commands, and
    a third to drop the workers whose heartbeat expired from the index)."""
    client = redis_client()
    ids = sorted(
        member.decode() if isinstance(member, bytes) else str(member)
        for member in await client.smembers(index_key())
    )
    if not ids:
        return []
    values = await client.mget([heartbeat_key(client_id) for client_id in ids])
    gone = [client_id for client_id, raw in zip(ids, values, strict=True) if raw is None]
    if gone:
        await client.srem(index_key(), *gone)
    return [beat for raw in values if (beat := parse_heartbeat(raw)) is not None]


@dataclass(frozen=True)
class LocalBridge:
    """A bridge running in this process, as ``/readyz`` sees it."""

    client_id: str
    broker_url: str
    is_connected: Callable[[], bool]


_local: LocalBridge | None = None


def set_local_bridge(bridge: LocalBridge | None) -> None:
    """Register the bridge this process runs (None when it stops)."""
    global _local  # noqa: PLW0603 - one bridge per process, by design
    _local = bridge


def local_bridge() -> LocalBridge | None:
    """The bridge this process runs, if any."""
    return _local
