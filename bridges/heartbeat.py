"""The bridge's heartbeat: its broker state and metrics, for daphne's ``/readyz`` and ``/metrics``.

A bridge worker is a process of its own, so the web processes learn about it through Redis:
every `INTERVAL_SECONDS` the heartbeat writes ``gateway:bridge:<GATEWAY_ID>:<client id>`` with
the broker state and the worker's metrics, expiring after `TTL_SECONDS`, so a worker that died
disappears on its own. With the in-memory channel layer (``rungateway``) the bridge runs in the
web process itself, which reads it from `bridges.runtime`; the heartbeat then only keeps the
``bridge_broker_connected`` gauge current.
"""

import asyncio
import contextlib
import json
import logging
import time
from typing import Any, TypedDict

from channels.layers import BaseChannelLayer
from channels_redis.core import RedisChannelLayer

from bridges.bridge import Bridge
from gateway import metrics
from gateway.conf import gateway_settings
from gateway.metrics import ExportedState

logger = logging.getLogger(__name__)

INTERVAL_SECONDS = 2.0
TTL_SECONDS = 10  # several missed beats: the worker is gone, not just slow
KEY_PREFIX = "gateway:bridge:"
WRITE_TIMEOUT_SECONDS = 5.0  # a stalled Redis must not stall the beats that follow
DELETE_TIMEOUT_SECONDS = 1.0


class Heartbeat(TypedDict):
    """What a bridge worker says about itself in Redis."""

    client_id: str
    broker: str  # "connected" or "disconnected"
    broker_url: str
    ts: float
    metrics: ExportedState


def key_pattern(gateway_id: str) -> str:
    """The Redis key pattern of every bridge heartbeat of ``gateway_id``.

    Gateway ids cannot hold glob characters (``*?[]``), so no escaping is needed.
    """
    return f"{KEY_PREFIX}{gateway_id}:*"


def heartbeat_key(bridge: Bridge) -> str:
    """The Redis key of ``bridge``'s heartbeat."""
    return f"{KEY_PREFIX}{gateway_settings().gateway_id}:{bridge.link.settings.client_id}"


def uses_redis(layer: BaseChannelLayer | None) -> bool:
    """Whether ``layer`` is the Redis channel layer, which heartbeats go through."""
    return isinstance(layer, RedisChannelLayer)


def beat(bridge: Bridge) -> Heartbeat:
    """The bridge's state now; also sets the ``bridge_broker_connected`` gauge."""
    connected = bridge.link.connected.is_set()
    metrics.set_gauge("bridge_broker_connected", 1 if connected else 0)
    return Heartbeat(
        client_id=bridge.link.settings.client_id,
        broker="connected" if connected else "disconnected",
        broker_url=bridge.link.settings.describe(),
        ts=time.time(),
        metrics=metrics.export_state(),
    )


async def run_heartbeat(
    bridge: Bridge, layer: BaseChannelLayer, interval: float = INTERVAL_SECONDS
) -> None:
    """Beat every ``interval`` seconds until cancelled; a failed beat is logged, never fatal."""
    key = heartbeat_key(bridge)
    failing = False
    while True:
        try:
            record = beat(bridge)
            if uses_redis(layer):
                # The layer's client for this loop: no second Redis configuration to keep.
                write = layer.connection(0).set(key, json.dumps(record), ex=TTL_SECONDS)
                await asyncio.wait_for(write, WRITE_TIMEOUT_SECONDS)
            if failing:
                logger.info("bridge heartbeat written again")
            failing = False
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            metrics.inc("bridge_heartbeat_failures")
            if failing:  # the traceback once per outage, not every beat
                logger.warning("bridge heartbeat still failing: %s", _describe(exc))
            else:
                logger.exception("bridge heartbeat failed; retrying every %.0f s", interval)
            failing = True
        await _pause(bridge, interval)


async def _pause(bridge: Bridge, interval: float) -> None:
    if bridge.link.connected.is_set():
        await asyncio.sleep(interval)
        return
    # Beat as soon as the bridge connects: readiness need not wait for the next interval.
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(bridge.link.connected.wait(), interval)


def start_heartbeat(bridge: Bridge, layer: BaseChannelLayer) -> "asyncio.Task[None]":
    """Start `run_heartbeat` as a task of the running loop."""
    return asyncio.create_task(run_heartbeat(bridge, layer), name="bridge-heartbeat")


async def stop_heartbeat(
    task: "asyncio.Task[None]", bridge: Bridge, layer: BaseChannelLayer
) -> None:
    """Cancel the heartbeat and remove its key, so readiness does not trust a stopped bridge."""
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    metrics.set_gauge("bridge_broker_connected", 0)
    if not uses_redis(layer):
        return
    try:
        await asyncio.wait_for(
            layer.connection(0).delete(heartbeat_key(bridge)), DELETE_TIMEOUT_SECONDS
        )
    except Exception as exc:  # the key expires anyway
        logger.warning("could not remove the bridge heartbeat: %s", _describe(exc))


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


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
