"""Liveness, readiness and metrics of real processes, as probes and Prometheus see them."""

import asyncio
import http.client
import json
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis as redis_lib
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import ClientConnection

from tests.conftest import start_gateway
from tests.support.clients import mqtt_client, ws_connect
from tests.support.processes import (
    Gateway,
    Mosquitto,
    Process,
    Redis,
    free_port,
    gateway_env,
    http_get,
    wait_for,
)
from tests.support.prometheus import SAMPLE_RE, parse_exposition, samples

READY_WITHIN = 10.0  # the worker subscribed; its first heartbeat is due at once
UNREADY_WITHIN = 15.0  # a heartbeat every 2 s says what changed
RECONNECT_WITHIN = 30.0  # the bridge retries with jittered backoff capped at 10 s
ANSWER_WITHIN = 5.0  # each check gives up after 2 s; the answer must never hang


def readiness(base: str) -> tuple[int, dict[str, Any], float]:
    """``/readyz``'s status, body and how long it took to answer."""
    started = time.monotonic()
    status, body = http_get(f"{base}/readyz")
    return status, json.loads(body), time.monotonic() - started


def poll_readiness(
    base: str,
    status: int,
    within: float,
    condition: Callable[[dict[str, Any]], bool] = lambda _: True,
) -> dict[str, Any]:
    """Poll ``/readyz`` until it answers ``status`` with a body that meets ``condition``."""
    deadline = time.monotonic() + within
    last: tuple[int, dict[str, Any], float] | None = None
    while time.monotonic() < deadline:
        last = readiness(base)
        assert last[2] < ANSWER_WITHIN, f"/readyz took {last[2]:.1f} s: {last[1]}"
        if last[0] == status and condition(last[1]):
            return last[1]
        time.sleep(0.2)
    pytest.fail(f"/readyz did not answer {status} within {within:.0f} s; last: {last}")


def assert_ready(body: dict[str, Any]) -> None:
    assert body == {
        "status": "ready",
        "checks": {"database": "ok", "channel_layer": "ok", "bridge": "ok"},
    }


def failing(body: dict[str, Any]) -> dict[str, str]:
    """The checks that failed, with their reasons."""
    return {name: reason for name, reason in body["checks"].items() if reason != "ok"}


def scrape(base: str) -> tuple[str, str]:
    """``/metrics``: its content type and its text."""
    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as response:
        return response.headers["Content-Type"], response.read().decode()


async def next_message(ws: ClientConnection, source: str, within: float = 10.0) -> dict[str, Any]:
    """The next room message from ``source``, past welcomes and anything else."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while (left := deadline - loop.time()) > 0:
        try:
            frame = json.loads(await asyncio.wait_for(ws.recv(), left))
        except TimeoutError:
            break
        if frame.get("type") == "message" and frame.get("source") == source:
            return dict(frame)
    pytest.fail(f"no message from {source} within {within:.0f} s")


def published(base: str, process: str, source: str) -> float:
    """``gateway_messages_published_total`` of ``process`` for ``source`` (0 when absent)."""
    found = samples(
        parse_exposition(scrape(base)[1]),
        "gateway_messages_published_total",
        process=process,
        source=source,
    )
    return sum(s.value for s in found)


def test_healthz_is_alive_and_probes_are_get_only(gateway: Gateway) -> None:
    assert http_get(f"{gateway.http}/healthz") == (200, '{"status": "ok"}')
    for path in ("healthz", "readyz", "metrics"):
        connection = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
        try:
            connection.request("HEAD", f"/{path}")
            response = connection.getresponse()
            response.read()
        finally:
            connection.close()
        assert (response.status, response.headers["Allow"]) == (405, "GET")


def test_readyz_is_ready_once_the_worker_is_subscribed(gateway: Gateway) -> None:
    assert_ready(poll_readiness(gateway.http, 200, READY_WITHIN))


async def test_metrics_shows_the_workers_and_this_process_numbers(
    gateway: Gateway, broker: Mosquitto
) -> None:
    worker = f"worker:{gateway.env['GATEWAY_ID']}-bridge-0"  # its MQTT client id
    mqtt_before = await asyncio.to_thread(published, gateway.http, worker, "mqtt")
    ws_before = await asyncio.to_thread(published, gateway.http, "web", "ws")
    room = f"ops-{uuid.uuid4().hex[:8]}"
    async with ws_connect(gateway.ws, room) as browser, mqtt_client(broker.port) as device:
        await device.publish(f"rooms/{room}/sensor-1", b'{"t": 21.5}', qos=1)
        assert (await next_message(browser, "mqtt"))["message"] == {"t": 21.5}
        await browser.send(json.dumps({"message": "hi"}))
        assert (await next_message(browser, "ws"))["message"] == "hi"

    # The worker's numbers arrive with its next heartbeat.
    def counted() -> bool:
        return published(gateway.http, worker, "mqtt") >= mqtt_before + 1

    await asyncio.to_thread(wait_for, counted, "the worker's mqtt count in /metrics", 10)
    content_type, text = await asyncio.to_thread(scrape, gateway.http)
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
    for line in text.splitlines():
        assert line.startswith(("# HELP ", "# TYPE ")) or SAMPLE_RE.match(line), line
    families = parse_exposition(text)
    ws_now = samples(families, "gateway_messages_published_total", process="web", source="ws")
    assert sum(s.value for s in ws_now) >= ws_before + 1
    # daphne publishes no device messages: that number is the worker's alone.
    assert not samples(families, "gateway_messages_published_total", process="web", source="mqtt")
    connected = samples(families, "gateway_bridge_broker_connected", process=worker)
    assert [s.value for s in connected] == [1]
    # As Prometheus's own parser reads the page: the families, label names and buckets that
    # dashboards rely on, and no series beyond the gateway's (no _created).
    parsed = {family.name: family for family in text_string_to_metric_families(text)}
    published_family = parsed["gateway_messages_published"]  # the parser drops a counter's _total
    assert published_family.type == "counter"
    assert {s.name for s in published_family.samples} == {"gateway_messages_published_total"}
    assert {"process", "source"} == set().union(*(s.labels for s in published_family.samples))
    assert parsed["gateway_bridge_broker_connected"].type == "gauge"
    latency = parsed["gateway_delivery_latency_seconds"]  # the browser's deliveries
    assert latency.type == "histogram"
    web = [s for s in latency.samples if s.labels.get("process") == "web"]
    assert [s.labels["le"] for s in web if s.name.endswith("_bucket")] == [
        *("0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5"),
        *("1.0", "2.5", "5.0", "10.0", "+Inf"),
    ]
    [count] = [s.value for s in web if s.name == "gateway_delivery_latency_seconds_count"]
    assert count >= 2
    for family in parsed.values():
        assert family.name.startswith("gateway_"), family.name
        assert not any(s.name.endswith("_created") for s in family.samples), family.name


def test_readyz_follows_the_broker_and_the_worker(
    tmp_path: Path, redis_server: Redis, database_url: str
) -> None:
    broker = Mosquitto(tmp_path).start()
    stack = start_gateway(tmp_path, broker, redis_server, database_url)
    try:
        assert_ready(poll_readiness(stack.http, 200, READY_WITHIN))
        broker.stop()
        body = poll_readiness(stack.http, 503, UNREADY_WITHIN, lambda b: "bridge" in failing(b))
        assert body["status"] == "unready"
        assert failing(body) == {"bridge": failing(body)["bridge"]}  # the rest is fine
        assert failing(body)["bridge"].startswith("no bridge connected to the broker")
        assert f"127.0.0.1:{broker.port}" in failing(body)["bridge"]
        broker.start()  # the same port
        assert_ready(poll_readiness(stack.http, 200, RECONNECT_WITHIN))
        # A worker that stops says so at once, rather than when its heartbeat expires (10 s).
        stack.worker.stop()
        body = poll_readiness(stack.http, 503, 5, lambda b: "bridge" in failing(b))
        assert "no bridge worker reported" in failing(body)["bridge"]
    finally:
        stack.stop()
        broker.stop()


def test_readyz_follows_redis(tmp_path: Path, database_url: str) -> None:
    redis = Redis(tmp_path).start()  # its own: this test stops it
    broker = Mosquitto(tmp_path).start()
    stack = start_gateway(tmp_path, broker, redis, database_url)
    try:
        assert_ready(poll_readiness(stack.http, 200, READY_WITHIN))
        redis.stop()
        body = poll_readiness(
            stack.http, 503, UNREADY_WITHIN, lambda b: "channel_layer" in failing(b)
        )
        assert body["status"] == "unready"
        assert body["checks"]["database"] == "ok"
        assert failing(body)["channel_layer"].startswith(("ConnectionError", "timed out"))
        # Metrics still answer, with this process's own numbers.
        _, text = scrape(stack.http)
        parse_exposition(text)
        redis.start()  # the same port
        assert_ready(poll_readiness(stack.http, 200, RECONNECT_WITHIN))
        assert stack.worker.alive()
        assert stack.web.alive()
    finally:
        stack.stop()
        broker.stop()
        redis.stop()


def test_rungateway_reports_its_in_process_bridge(tmp_path: Path, database_url: str) -> None:
    broker = Mosquitto(tmp_path).start()
    port = free_port()
    env = gateway_env(MQTT_URL=broker.url, DATABASE_URL=database_url, GATEWAY_ID="gw-one")
    argv = [sys.executable, "manage.py", "rungateway", "--port", str(port), "--no-migrate"]
    gateway = Process("rungateway", argv, tmp_path / "rungateway.log", env=env).start()
    base = f"http://127.0.0.1:{port}"
    try:
        gateway.wait_log("subscribed to", timeout=30)
        assert_ready(poll_readiness(base, 200, READY_WITHIN))

        def gauge_set() -> bool:
            families = parse_exposition(scrape(base)[1])
            found = samples(families, "gateway_bridge_broker_connected", process="web")
            return [s.value for s in found] == [1]

        wait_for(gauge_set, "the in-process bridge's gauge in /metrics", 10)
        assert "worker:" not in scrape(base)[1]  # no Redis, no workers
        broker.stop()
        body = poll_readiness(base, 503, UNREADY_WITHIN, lambda b: "bridge" in failing(b))
        assert failing(body) == {
            "bridge": f"no bridge connected to the broker: gw-one-bridge is disconnected from "
            f"mqtt://127.0.0.1:{broker.port} (MQTT 5)"
        }
        broker.start()
        assert_ready(poll_readiness(base, 200, RECONNECT_WITHIN))
    finally:
        gateway.stop()
        broker.stop()


def test_the_heartbeat_follows_the_broker_at_once_and_costs_the_same_in_a_full_redis(
    tmp_path: Path, database_url: str
) -> None:
    redis = Redis(tmp_path).start()  # its own: this test fills it
    broker = Mosquitto(tmp_path).start()
    stack = start_gateway(tmp_path, broker, redis, database_url)
    client = redis_lib.Redis(host="127.0.0.1", port=redis.port, decode_responses=True)
    try:
        assert_ready(poll_readiness(stack.http, 200, READY_WITHIN))
        (key,) = client.keys("gateway:bridge:*")  # this test's Redis holds one worker's
        assert client.smembers(f"gateway:bridges:{stack.env['GATEWAY_ID']}")

        def record() -> dict[str, Any]:
            return dict(json.loads(client.get(key) or "{}"))

        def flip(to: str) -> float:
            """How long after the last beat the record said ``to``."""
            before = record()["ts"]
            wait_for(lambda: record().get("broker") == to, f"the record to say {to}", 30)
            return float(record()["ts"]) - float(before)

        broker.stop()
        # Written when the connection went, not at the next 2 s beat.
        assert flip("disconnected") < 1.9
        assert poll_readiness(stack.http, 503, 2, lambda b: "bridge" in failing(b))
        broker.start()
        assert flip("connected") < 1.9
        assert_ready(poll_readiness(stack.http, 200, 2))

        def cost() -> dict[str, int]:
            """The Redis commands one /readyz and one /metrics cost (others' traffic aside)."""
            client.config_resetstat()
            readiness(stack.http)
            scrape(stack.http)
            stats = client.info("commandstats")
            found = {name: stats.get(f"cmdstat_{name}") for name in ("scan", "keys", "smembers")}
            return {name: int(stat["calls"]) for name, stat in found.items() if stat}

        empty = cost()
        for start in range(0, 1_000_000, 20_000):
            client.mset({f"unrelated:{n}": "x" for n in range(start, start + 20_000)})
        assert client.dbsize() > 1_000_000
        full = cost()
        assert "scan" not in full
        assert "keys" not in full
        assert full == empty == {"smembers": 2}
    finally:
        client.close()
        stack.stop()
        broker.stop()
        redis.stop()
