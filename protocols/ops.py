"""Endpoints for operations: liveness (``/healthz``), readiness (``/readyz``), ``/metrics``.

Readiness asks what a message needs to get through: the database, the channel layer, and a
bridge connected to the broker. Each check has its own timeout and catches its own errors, so
the answer is always 200 or 503 and comes within `CHECK_TIMEOUT_SECONDS`. With rooms on several
Redis shards (``REDIS_SHARDS``) the answer also says whether each shard answers, under
``shards``; a shard that is down does not make the process unready (every process would be,
and the other shards' rooms work), its rooms' sockets are told instead.

``/metrics`` shows this process's metrics (``process="web"``) and those of every live bridge
worker (``process="worker:<MQTT client id>"``), read from their heartbeats in Redis. Every web
process shows the same worker series: aggregate them with ``max``, or scrape one web process.
"""

import asyncio
import hmac
import ipaddress
import logging
from collections.abc import Awaitable
from typing import Any

from asgiref.sync import sync_to_async
from channels.layers import BaseChannelLayer, get_channel_layer
from django.conf import settings
from django.db import connections
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from gateway import metrics
from gateway.bridge_state import TTL_SECONDS, local_bridge, read_heartbeats
from gateway.metrics import ExportedState
from gateway.shared import redis_client, shard_names, uses_redis
from protocols.client_address import request_address

logger = logging.getLogger(__name__)

CHECK_TIMEOUT_SECONDS = 2.0
LOCAL_PROCESS = "web"
NO_BRIDGE = "no bridge connected to the broker"
_REASON_LIMIT = 300


class _NotReadyError(Exception):
    """A check failed for a reason worth saying as it is."""


@require_GET
def healthz(request: HttpRequest) -> HttpResponse:
    """Alive: the process answers HTTP."""
    return JsonResponse({"status": "ok"})


@never_cache
@require_GET
async def readyz(request: HttpRequest) -> HttpResponse:
    """Ready: the database, the channel layer and a broker-connected bridge all answer."""
    layer = get_channel_layer()
    names = ("database", "channel_layer", "bridge")
    results = await asyncio.gather(
        _bounded(_check_database()),
        _bounded(_check_channel_layer(layer)),
        _bounded(_check_bridge()),
    )
    ready = all(result == "ok" for result in results)
    body: dict[str, Any] = {"status": "ready" if ready else "unready"}
    if may_see_detail(request):  # broker addresses, client ids, exception text
        body["checks"] = dict(zip(names, results, strict=True))
        shards = shard_names() if uses_redis() else ()
        if len(shards) > 1:  # the main one's answer is the channel layer's
            others = await asyncio.gather(*(_bounded(_ping(i)) for i in range(1, len(shards))))
            main = body["checks"]["channel_layer"]
            body["shards"] = dict(zip(shards, (main, *others), strict=True))
    return JsonResponse(body, status=200 if ready else 503)


@never_cache
@require_GET
async def metrics_view(request: HttpRequest) -> HttpResponse:
    """This process's metrics and the bridge workers', in the Prometheus text format."""
    if not may_see_detail(request):
        return JsonResponse(
            {"error": "forbidden", "detail": "metrics are for this machine or GATEWAY_OPS_TOKEN"},
            status=403,
        )
    extra = await _worker_states()
    return HttpResponse(
        metrics.exposition(extra, process=LOCAL_PROCESS), content_type=metrics.CONTENT_TYPE
    )


def may_see_detail(request: HttpRequest) -> bool:
    """Whether ``request`` may see what the gateway's internals say: from this machine, or
    with ``Authorization: Bearer <GATEWAY_OPS_TOKEN>``."""
    token: str | None = settings.OPS_TOKEN
    if token is not None:
        given = request.headers.get("Authorization", "")
        if hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            return True
    try:
        return ipaddress.ip_address(request_address(request, settings.TRUSTED_PROXIES)).is_loopback
    except ValueError:
        return False


async def _bounded(check: Awaitable[None]) -> str:
    """``"ok"``, or why not: the check's failure, or that it took too long."""
    try:
        await asyncio.wait_for(check, CHECK_TIMEOUT_SECONDS)
    except TimeoutError:
        return f"timed out after {CHECK_TIMEOUT_SECONDS:g} s"
    except _NotReadyError as exc:
        return str(exc)
    except Exception as exc:  # noqa: BLE001 - any failure is the check's answer: not ready
        return f"{type(exc).__name__}: {exc}"[:_REASON_LIMIT]
    return "ok"


async def _check_database() -> None:
    # Not thread-sensitive: a hung database must not block the one thread sync views share.
    await sync_to_async(_select_one, thread_sensitive=False)()


def _select_one() -> None:
    connection = connections["default"]
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    finally:
        connection.close()  # a pool thread must not keep a connection of its own


async def _check_channel_layer(layer: BaseChannelLayer | None) -> None:
    if layer is None:
        raise _NotReadyError("no channel layer is configured")
    if uses_redis():  # the channel layer and the gateway's transport are on this Redis
        await _ping(0)
    # Without Redis everything lives in this process: it is up when the process is.


async def _ping(shard: int) -> None:
    await redis_client(shard).ping()


async def _check_bridge() -> None:
    if uses_redis():
        beats = await read_heartbeats()
        if any(beat.get("broker") == "connected" for beat in beats):
            return
        if not beats:
            raise _NotReadyError(
                f"{NO_BRIDGE}: no bridge worker reported in the last {TTL_SECONDS} s "
                "(is runworker mqtt-bridge running?)"
            )
        states = "; ".join(
            f"{beat['client_id']} is {beat.get('broker')} from {beat.get('broker_url')}"
            for beat in beats
        )
        raise _NotReadyError(f"{NO_BRIDGE}: {states}"[:_REASON_LIMIT])
    bridge = local_bridge()  # no Redis: the bridge can only be in this process
    if bridge is None:
        raise _NotReadyError(f"{NO_BRIDGE}: no bridge runs in this process")
    if not bridge.is_connected():
        raise _NotReadyError(
            f"{NO_BRIDGE}: {bridge.client_id} is disconnected from {bridge.broker_url}"
        )


async def _worker_states() -> list[tuple[str, ExportedState]]:
    """The metrics of the bridge workers, each with its process label; none without Redis."""
    if not uses_redis():
        return []
    try:
        beats = await asyncio.wait_for(read_heartbeats(), CHECK_TIMEOUT_SECONDS)
    except Exception as exc:  # noqa: BLE001 - this process's own metrics are still worth serving
        metrics.inc("metrics_remote_failures", "redis")
        logger.warning("bridge workers' metrics unavailable: %s: %s", type(exc).__name__, exc)
        return []
    local = local_bridge()
    # rungateway with Redis: its own bridge's numbers are already this process's.
    own = local.client_id if local is not None else None
    return [
        (f"worker:{beat['client_id']}", beat["metrics"])
        for beat in beats
        if beat["client_id"] != own
    ]
