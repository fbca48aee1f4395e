"""The bridge's heartbeat: its broker state and metrics, for daphne's ``/readyz`` and ``/metrics``.

Every `INTERVAL_SECONDS` the heartbeat writes the record `gateway.bridge_state` describes. Without
Redis (``rungateway``) the bridge runs in the web process, which sees it
through `gateway.bridge_state.local_bridge`; the heartbeat then only keeps the
``bridge_broker_connected`` gauge current.
"""

import asyncio
import contextlib
import json
import logging
import time

from bridges.bridge import Bridge
from gateway import metrics
from gateway.bridge_state import INDEX_TTL_SECONDS, TTL_SECONDS, Heartbeat, heartbeat_key, index_key
from gateway.shared import redis_client, uses_redis

logger = logging.getLogger(__name__)

INTERVAL_SECONDS = 2.0
WRITE_TIMEOUT_SECONDS = 5.0  # a stalled Redis must not stall the beats that follow
DELETE_TIMEOUT_SECONDS = 1.0


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


async def run_heartbeat(bridge: Bridge, interval: float = INTERVAL_SECONDS) -> None:
    """Beat every ``interval`` seconds until cancelled; a failed beat is logged, never fatal."""
    key = heartbeat_key(bridge.link.settings.client_id)
    failing = False
    while True:
        try:
            bridge.link.connection_changed.clear()  # a change from now on beats again at once
            record = beat(bridge)
            if uses_redis():
                pipe = redis_client().pipeline(transaction=False)
                pipe.set(key, json.dumps(record), ex=TTL_SECONDS)
                pipe.sadd(index_key(), record["client_id"])
                pipe.expire(index_key(), INDEX_TTL_SECONDS)
                await asyncio.wait_for(pipe.execute(), WRITE_TIMEOUT_SECONDS)
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
    """Wait ``interval``, or less: until the broker connection comes or goes, so that
    readiness follows it at once rather than at the next beat."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(bridge.link.connection_changed.wait(), interval)


def start_heartbeat(bridge: Bridge) -> "asyncio.Task[None]":
    """Start `run_heartbeat` as a task of the running loop."""
    return asyncio.create_task(run_heartbeat(bridge), name="bridge-heartbeat")


async def stop_heartbeat(task: "asyncio.Task[None]", bridge: Bridge) -> None:
    """Cancel the heartbeat and remove its key, so readiness does not trust a stopped bridge."""
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    metrics.set_gauge("bridge_broker_connected", 0)
    if not uses_redis():
        return
    client_id = bridge.link.settings.client_id
    try:
        pipe = redis_client().pipeline(transaction=False)
        pipe.delete(heartbeat_key(client_id))
        pipe.srem(index_key(), client_id)
        await asyncio.wait_for(pipe.execute(), DELETE_TIMEOUT_SECONDS)
    except Exception as exc:  # noqa: BLE001 - whatever failed, the key expires anyway
        logger.warning("could not remove the bridge heartbeat: %s", _describe(exc))


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
