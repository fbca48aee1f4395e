"""Metrics as Prometheus reads them: counters, gauges, histograms, escaping, merged processes."""

import json
import threading
import uuid
from collections import Counter
from typing import Any

import pytest
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families

from gateway import metrics
from gateway.metrics import ExportedState
from protocols import ops
from tests.support.prometheus import SAMPLE_RE, parse_exposition, samples


def unique(prefix: str) -> str:
    """A metric name no other test uses: the metrics are process-wide."""
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def test_counters_are_totals_with_their_family_label() -> None:
    text = metrics.render(
        [
            (
                None,
                {
                    "counters": {
                        "messages_published": {"mqtt": 2, "ws": 5},
                        "messages_dropped": {"channel_full": 3},
                        "mqtt_connects": {"": 1},
                    }
                },
            )
        ]
    )
    families = parse_exposition(text)
    published = families["gateway_messages_published_total"]
    assert published.kind == "counter"
    assert published.help == "Messages put into rooms, by the edge they came from."
    assert 'gateway_messages_published_total{source="mqtt"} 2.0\n' in text
    assert 'gateway_messages_published_total{source="ws"} 5.0\n' in text
    assert 'gateway_messages_dropped_total{reason="channel_full"} 3.0\n' in text
    assert "gateway_mqtt_connects_total 1.0\n" in text  # no label value, no label
    assert "_created" not in text
    lines = text.splitlines()
    start = lines.index(
        "# HELP gateway_messages_dropped_total Messages dropped or refused, by reason."
    )
    assert lines[start + 1] == "# TYPE gateway_messages_dropped_total counter"


def test_live_counters_gauges_and_the_old_api_agree() -> None:
    counter, gauge = unique("test_events"), unique("test_level")
    metrics.describe(counter, "Events of a test.", label="kind")
    metrics.inc(counter, "a")
    metrics.inc(counter, "a", 2)
    metrics.set_gauge(gauge, 5)
    metrics.add_gauge(gauge, -1.5)
    metrics.add_gauge(gauge, 2, label="other")
    assert metrics.get(counter, "a") == 3
    assert metrics.snapshot()[counter, "a"] == 3
    assert all(isinstance(v, int) for v in metrics.snapshot().values())  # counters only
    assert metrics.get_gauge(gauge) == 3.5
    families = parse_exposition(metrics.exposition())
    assert [s.value for s in samples(families, f"gateway_{counter}_total", kind="a")] == [3]
    assert families[f"gateway_{gauge}"].kind == "gauge"
    assert [(s.labels, s.value) for s in families[f"gateway_{gauge}"].samples] == [
        ({}, 3.5),
        ({"reason": "other"}, 2),
    ]


def test_histogram_buckets_are_cumulative_with_inf_sum_and_count() -> None:
    name = unique("test_latency_seconds")
    for seconds in (0.001, 0.003, 0.3, 0.3, 20.0):  # 0.001 is on a bound: it is "le" it
        metrics.observe(name, seconds, label="publish")
    state = metrics.export_state()["histograms"][name]["publish"]
    assert state["count"] == 5
    assert state["sum"] == pytest.approx(20.604)
    text = metrics.exposition()
    families = parse_exposition(text)
    histogram = families[f"gateway_{name}"]
    assert histogram.kind == "histogram"
    buckets = {
        s.labels["le"]: s.value
        for s in samples(families, f"gateway_{name}_bucket", reason="publish")
    }
    assert list(buckets) == [
        *("0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5"),
        *("1.0", "2.5", "5.0", "10.0", "+Inf"),
    ]
    assert buckets["0.001"] == 1
    assert buckets["0.0025"] == 1
    assert buckets["0.005"] == 2
    assert buckets["0.25"] == 2
    assert buckets["0.5"] == 4
    assert buckets["10.0"] == 4
    assert buckets["+Inf"] == 5
    assert f'gateway_{name}_count{{reason="publish"}} 5.0\n' in text
    [total] = samples(families, f"gateway_{name}_sum", reason="publish")
    assert total.value == pytest.approx(20.604)


def test_label_values_are_escaped_and_read_back_unchanged() -> None:
    nasty = 'a"b\\c\nd}e,f="g"'
    text = metrics.render([(None, {"counters": {"messages_dropped": {nasty: 1}}})])
    assert 'reason="a\\"b\\\\c\\nd}e,f=\\"g\\""' in text
    assert text.count("\n") == 3  # the newline in the value did not break the line
    [sample] = parse_exposition(text)["gateway_messages_dropped_total"].samples
    assert sample.labels == {"reason": nasty}


def test_snapshots_of_other_processes_merge_under_process_labels() -> None:
    name = unique("test_merged")
    metrics.inc(name, "x", 4)
    # A worker's state as it travels: through JSON, in its heartbeat.
    worker = json.loads(json.dumps(metrics.export_state()))
    worker["counters"][name]["x"] = 7
    worker["gauges"]["bridge_broker_connected"] = {"": 1}
    text = metrics.exposition([("worker:gw-bridge-1", worker)], process="web")
    families = parse_exposition(text)
    family = families[f"gateway_{name}_total"]
    assert {(s.labels["process"], s.value) for s in family.samples} == {
        ("web", 4),
        ("worker:gw-bridge-1", 7),
    }
    assert text.count(f"# TYPE gateway_{name}_total counter") == 1
    assert samples(families, "gateway_bridge_broker_connected", process="worker:gw-bridge-1")
    for sample in (s for f in families.values() for s in f.samples):
        assert sample.labels["process"] in ("web", "worker:gw-bridge-1")


@pytest.mark.parametrize(
    "broken",
    [
        {"counters": {"messages_published": {"mqtt": "many"}}},
        {"counters": ["not", "a", "mapping"]},
        {"gauges": {"bridge_broker_connected": {"": True}}},
        {"histograms": {"h_seconds": {"": {"buckets": {"1.0": 1}, "sum": 1, "count": 1}}}},
        {"histograms": {"h_seconds": {"": {"buckets": {"x": 1, "+Inf": 1}, "sum": 1, "count": 1}}}},
        {"histograms": {"h_seconds": {"": "nope"}}},
        # A negative bound (prometheus_client would leave out its sum and count), and a count
        # that is not the +Inf bucket's.
        {
            "histograms": {
                "h_seconds": {"": {"buckets": {"-1": 0, "+Inf": 1}, "sum": 1, "count": 1}}
            }
        },
        {"histograms": {"h_seconds": {"": {"buckets": {"1": 1, "+Inf": 1}, "sum": 1, "count": 2}}}},
        {"weird": 1},
    ],
)
def test_a_malformed_snapshot_is_left_out_not_fatal(broken: dict[str, Any]) -> None:
    good = {"counters": {"messages_published": {"ws": 1}}}
    text = metrics.render([("web", good), ("worker:old", broken)])
    families = parse_exposition(text)
    assert [s.labels["process"] for f in families.values() for s in f.samples] == ["web"]


def test_a_kind_clash_between_sources_keeps_the_first_kind() -> None:
    text = metrics.render(
        [
            ("web", {"gauges": {"queue": {"": 1}}}),
            (
                "worker:x",
                {"histograms": {"queue": {"": {"buckets": {"+Inf": 1}, "sum": 1, "count": 1}}}},
            ),
        ]
    )
    families = parse_exposition(text)
    assert families["gateway_queue"].kind == "gauge"
    assert len(families["gateway_queue"].samples) == 1


def test_special_values_and_an_empty_state() -> None:
    text = metrics.render(
        [(None, {"gauges": {"g": {"a": float("inf"), "b": float("nan"), "c": -2}}})]
    )
    assert [line.rsplit(" ", 1)[1] for line in text.splitlines()[2:]] == ["+Inf", "NaN", "-2.0"]
    parse_exposition(text)
    assert metrics.render([(None, {})]) == ""


def test_every_line_of_the_full_exposition_is_well_formed() -> None:
    metrics.observe(unique("test_any_seconds"), 0.01)
    text = metrics.exposition([("worker:w", metrics.export_state())], process="web")
    for line in text.splitlines():
        assert line.startswith(("# HELP ", "# TYPE ")) or SAMPLE_RE.match(line), line
    parse_exposition(text)
    json.dumps(metrics.export_state(), allow_nan=False)


def test_recording_from_many_threads_loses_nothing() -> None:
    counter, gauge, histogram = unique("test_c"), unique("test_g"), unique("test_h_seconds")

    def work() -> None:
        for _ in range(2000):
            metrics.inc(counter)
            metrics.add_gauge(gauge, 1)
            metrics.observe(histogram, 0.002)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert metrics.get(counter) == 16_000
    assert metrics.get_gauge(gauge) == 16_000
    state = metrics.export_state()["histograms"][histogram][""]
    assert state["count"] == 16_000
    assert state["buckets"]["0.0025"] == 16_000


# The series themselves: a representative state, and what /metrics made of it before it went
# through prometheus_client.


def fresh_metrics(monkeypatch: pytest.MonkeyPatch) -> None:
    """No metric recorded yet, and families described only for the test's duration."""
    monkeypatch.setattr(metrics, "_counts", Counter())
    monkeypatch.setattr(metrics, "_gauges", {})
    monkeypatch.setattr(metrics, "_histograms", {})
    monkeypatch.setattr(metrics, "_drops_logged", {})
    monkeypatch.setattr(metrics, "_families", dict(metrics._families))


def representative_state(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, ExportedState]]:
    """Record counters, gauges and histograms in this process; the states of two workers."""
    fresh_metrics(monkeypatch)
    # A worker's histogram and counter, as its heartbeat carries them: through JSON.
    metrics.observe("mqtt_publish_seconds", 0.004, label="qos1")
    metrics.observe("mqtt_publish_seconds", 0.7, label="qos1")
    metrics.inc("dynsec_changes", "applied", 3)
    exported: ExportedState = json.loads(json.dumps(metrics.export_state()))
    fresh_metrics(monkeypatch)
    workers: list[tuple[str, ExportedState]] = []
    for n, published in enumerate((7, 11)):
        state = ExportedState(counters={}, gauges={}, histograms={})
        state["counters"]["mqtt_messages_in"] = {"": published}
        state["counters"]["mqtt_messages_out"] = {"": published + 1}
        state["counters"]["messages_published"] = {"mqtt": published}
        state["gauges"]["bridge_broker_connected"] = {"": n}
        workers.append((f"worker:gw-bridge-{n}", state))
    workers[0][1]["counters"]["messages_dropped"] = {"payload_too_big": 2}
    workers[0][1]["counters"]["dynsec_changes"] = exported["counters"]["dynsec_changes"]
    workers[0][1]["histograms"] = exported["histograms"]

    metrics.describe("test_jobs", "Jobs of a test, by kind.", label="kind")
    metrics.inc("test_jobs", "import", 4)
    metrics.inc("messages_published", "mqtt", 2)
    metrics.inc("messages_published", "ws", 5)
    metrics.dropped("channel_full", "room kitchen", 3)
    metrics.dropped("no_rule", "topic spam/1")
    metrics.inc("mqtt_connects")
    metrics.inc("ws_errors", "rate_limited")
    metrics.inc("ws_closed", 'odd "reason"\\ with\na newline')
    metrics.inc("payload_decode_failures", "json")
    metrics.inc("presence_events", "join", 2)
    metrics.inc("mqtt_hook_denied", "broker-a/acl")
    metrics.inc("mqtt_hook_errors", "auth")
    metrics.inc("logins_throttled")  # not described: a help text and label of its own
    metrics.inc("frames_fanned_out", amount=12_345_678)
    metrics.set_gauge("fanout_rooms", 3)
    metrics.add_gauge("ws_connections", 2)
    metrics.add_gauge("ws_connections", -1)
    metrics.set_gauge("queue_fill_ratio", 0.25, "history")
    for seconds in (0.001, 0.003, 0.3, 0.3, 20.0):
        metrics.observe("delivery_latency_seconds", seconds)
    metrics.observe("delivery_latency_seconds", 0.02, label="mqtt")
    metrics.observe("handoff_seconds", 1.5)
    return workers


Series = tuple[str, tuple[tuple[str, str], ...], float]


def series(text: str) -> tuple[set[tuple[str, str, str]], list[Series]]:
    """The families (name, type, help) and the samples (name, labels, value) of ``text``."""
    families, found = set(), []
    for family in text_string_to_metric_families(text):
        families.add((family.name, family.type, family.documentation))
        found += [(s.name, tuple(sorted(s.labels.items())), s.value) for s in family.samples]
    return families, sorted(found)


def test_the_series_are_those_the_hand_written_renderer_gave(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    workers = representative_state(monkeypatch)
    families, found = series(metrics.exposition(workers, process="web"))
    assert (families, found) == series(RECORDED)
    assert len(found) == len(set(found)) == 91
    # Without a process label: this process's series of the same page, unlabelled.
    local_families, local = series(metrics.exposition())
    web = [s for s in found if ("process", "web") in s[1]]
    assert local == sorted((n, tuple(kv for kv in ls if kv[0] != "process"), v) for n, ls, v in web)
    assert local_families <= families


def test_the_metrics_page_has_what_dashboards_rely_on(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    workers = representative_state(monkeypatch)

    async def worker_states(*args: object) -> list[tuple[str, ExportedState]]:
        return workers  # as read from the workers' heartbeats in Redis

    monkeypatch.setattr(ops, "_worker_states", worker_states)
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    text = response.content.decode()
    assert series(text) == series(RECORDED)
    families = {f.name: f for f in text_string_to_metric_families(text)}
    # The parser names a counter family without its _total; its samples keep it.
    expected = {
        "gateway_messages_published": ("counter", {"process", "source"}),
        "gateway_messages_dropped": ("counter", {"process", "reason"}),
        "gateway_mqtt_messages_in": ("counter", {"process"}),
        "gateway_ws_errors": ("counter", {"process", "code"}),
        "gateway_payload_decode_failures": ("counter", {"process", "codec"}),
        "gateway_presence_events": ("counter", {"process", "event"}),
        "gateway_mqtt_hook_denied": ("counter", {"process", "check"}),
        "gateway_mqtt_hook_errors": ("counter", {"process", "endpoint"}),
        "gateway_ws_connections": ("gauge", {"process"}),
        "gateway_bridge_broker_connected": ("gauge", {"process"}),
        "gateway_delivery_latency_seconds": ("histogram", {"process", "reason", "le"}),
    }
    for name, (kind, label_names) in expected.items():
        family = families[name]
        assert family.type == kind, name
        assert set().union(*(s.labels for s in family.samples)) == label_names, name
    assert {s.name for s in families["gateway_messages_published"].samples} == {
        "gateway_messages_published_total"
    }
    processes = {s.labels["process"] for f in families.values() for s in f.samples}
    assert processes == {"web", "worker:gw-bridge-0", "worker:gw-bridge-1"}
    for family in families.values():
        assert family.name.startswith("gateway_")
        assert not any(s.name.endswith("_created") for s in family.samples), family.name
    latency = families["gateway_delivery_latency_seconds"]
    web = [s for s in latency.samples if s.labels["process"] == "web"]
    buckets = [s for s in web if s.name.endswith("_bucket") and "reason" not in s.labels]
    assert [s.labels["le"] for s in buckets] == [
        *("0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5"),
        *("1.0", "2.5", "5.0", "10.0", "+Inf"),
    ]
    assert [s.value for s in buckets] == [1, 1, 2, 2, 2, 2, 2, 2, 4, 4, 4, 4, 4, 5]
    unlabelled = {s.name: s.value for s in web if "le" not in s.labels and "reason" not in s.labels}
    assert unlabelled == {
        "gateway_delivery_latency_seconds_sum": pytest.approx(20.604),
        "gateway_delivery_latency_seconds_count": 5,
    }


# What /metrics rendered for `representative_state` (workers and process="web") when it wrote
# the text format by hand: the series above must stay these.
RECORDED = """\
# HELP gateway_bridge_broker_connected 1 while the bridge is connected to its broker, else 0.
# TYPE gateway_bridge_broker_connected gauge
gateway_bridge_broker_connected{process="worker:gw-bridge-0"} 0
gateway_bridge_broker_connected{process="worker:gw-bridge-1"} 1
# HELP gateway_delivery_latency_seconds Seconds from a message entering its room to its delivery to a socket.
# TYPE gateway_delivery_latency_seconds histogram
gateway_delivery_latency_seconds_bucket{process="web",le="0.001"} 1
gateway_delivery_latency_seconds_bucket{process="web",le="0.0025"} 1
gateway_delivery_latency_seconds_bucket{process="web",le="0.005"} 2
gateway_delivery_latency_seconds_bucket{process="web",le="0.01"} 2
gateway_delivery_latency_seconds_bucket{process="web",le="0.025"} 2
gateway_delivery_latency_seconds_bucket{process="web",le="0.05"} 2
gateway_delivery_latency_seconds_bucket{process="web",le="0.1"} 2
gateway_delivery_latency_seconds_bucket{process="web",le="0.25"} 2
gateway_delivery_latency_seconds_bucket{process="web",le="0.5"} 4
gateway_delivery_latency_seconds_bucket{process="web",le="1.0"} 4
gateway_delivery_latency_seconds_bucket{process="web",le="2.5"} 4
gateway_delivery_latency_seconds_bucket{process="web",le="5.0"} 4
gateway_delivery_latency_seconds_bucket{process="web",le="10.0"} 4
gateway_delivery_latency_seconds_bucket{process="web",le="+Inf"} 5
gateway_delivery_latency_seconds_sum{process="web"} 20.604
gateway_delivery_latency_seconds_count{process="web"} 5
gateway_delivery_latency_seconds_bucket{process="web",reason="mqtt",le="0.001"} 0
gateway_delivery_latency_seconds_bucket{process="web",reason="mqtt",le="0.0025"} 0
gateway_delivery_latency_seconds_bucket{process="web",reason="mqtt",le="0.005"} 0
gateway_delivery_latency_seconds_bucket{process="web",reason="mqtt",le="0.01"} 0
gateway_delivery_latency_seconds_bucket{process="web",reason="mqtt",le="0.025"} 1
gateway_delivery_latency_seconds_bucket{process="web",reason="mqtt",le="0.05"} 1
gateway_delivery_latency_seconds_bucket{process="web",reason="mqtt",le="0.1"} 1
gateway_delivery_latency_seconds_bucket{process="web",reason="mqtt",le="0.25"} 1
gateway_delivery_latency_seconds_bucket{process="web",reason="mqtt",le="0.5"} 1
gateway_delivery_latency_seconds_bucket{process="web",reason="mqtt",le="1.0"} 1
gateway_delivery_latency_seconds_bucket{process="web",reason="mqtt",le="2.5"} 1
gateway_delivery_latency_seconds_bucket{process="web",reason="mqtt",le="5.0"} 1
gateway_delivery_latency_seconds_bucket{process="web",reason="mqtt",le="10.0"} 1
gateway_delivery_latency_seconds_bucket{process="web",reason="mqtt",le="+Inf"} 1
gateway_delivery_latency_seconds_sum{process="web",reason="mqtt"} 0.02
gateway_delivery_latency_seconds_count{process="web",reason="mqtt"} 1
# HELP gateway_dynsec_changes_total Changes sent to the broker's dynamic security, or failed syncs.
# TYPE gateway_dynsec_changes_total counter
gateway_dynsec_changes_total{process="worker:gw-bridge-0",reason="applied"} 3
# HELP gateway_fanout_rooms Rooms this process has sockets in (one transport membership each).
# TYPE gateway_fanout_rooms gauge
gateway_fanout_rooms{process="web"} 3
# HELP gateway_frames_fanned_out_total Frames this process wrote to its sockets of a room.
# TYPE gateway_frames_fanned_out_total counter
gateway_frames_fanned_out_total{process="web"} 12345678
# HELP gateway_handoff_seconds Gateway histogram handoff_seconds.
# TYPE gateway_handoff_seconds histogram
gateway_handoff_seconds_bucket{process="web",le="0.001"} 0
gateway_handoff_seconds_bucket{process="web",le="0.0025"} 0
gateway_handoff_seconds_bucket{process="web",le="0.005"} 0
gateway_handoff_seconds_bucket{process="web",le="0.01"} 0
gateway_handoff_seconds_bucket{process="web",le="0.025"} 0
gateway_handoff_seconds_bucket{process="web",le="0.05"} 0
gateway_handoff_seconds_bucket{process="web",le="0.1"} 0
gateway_handoff_seconds_bucket{process="web",le="0.25"} 0
gateway_handoff_seconds_bucket{process="web",le="0.5"} 0
gateway_handoff_seconds_bucket{process="web",le="1.0"} 0
gateway_handoff_seconds_bucket{process="web",le="2.5"} 1
gateway_handoff_seconds_bucket{process="web",le="5.0"} 1
gateway_handoff_seconds_bucket{process="web",le="10.0"} 1
gateway_handoff_seconds_bucket{process="web",le="+Inf"} 1
gateway_handoff_seconds_sum{process="web"} 1.5
gateway_handoff_seconds_count{process="web"} 1
# HELP gateway_logins_throttled_total Gateway counter logins_throttled.
# TYPE gateway_logins_throttled_total counter
gateway_logins_throttled_total{process="web"} 1
# HELP gateway_messages_dropped_total Messages dropped or refused, by reason.
# TYPE gateway_messages_dropped_total counter
gateway_messages_dropped_total{process="web",reason="channel_full"} 3
gateway_messages_dropped_total{process="web",reason="no_rule"} 1
gateway_messages_dropped_total{process="worker:gw-bridge-0",reason="payload_too_big"} 2
# HELP gateway_messages_published_total Messages put into rooms, by the edge they came from.
# TYPE gateway_messages_published_total counter
gateway_messages_published_total{process="web",source="mqtt"} 2
gateway_messages_published_total{process="web",source="ws"} 5
gateway_messages_published_total{process="worker:gw-bridge-0",source="mqtt"} 7
gateway_messages_published_total{process="worker:gw-bridge-1",source="mqtt"} 11
# HELP gateway_mqtt_connects_total Connections of the bridge to its broker.
# TYPE gateway_mqtt_connects_total counter
gateway_mqtt_connects_total{process="web"} 1
# HELP gateway_mqtt_hook_denied_total Brokers' HTTP hook checks answered with a denial.
# TYPE gateway_mqtt_hook_denied_total counter
gateway_mqtt_hook_denied_total{process="web",check="broker-a/acl"} 1
# HELP gateway_mqtt_hook_errors_total Brokers' HTTP hook requests that failed (answered: deny).
# TYPE gateway_mqtt_hook_errors_total counter
gateway_mqtt_hook_errors_total{process="web",endpoint="auth"} 1
# HELP gateway_mqtt_messages_in_total Device messages the bridge handed on to rooms.
# TYPE gateway_mqtt_messages_in_total counter
gateway_mqtt_messages_in_total{process="worker:gw-bridge-0"} 7
gateway_mqtt_messages_in_total{process="worker:gw-bridge-1"} 11
# HELP gateway_mqtt_messages_out_total Room messages the broker confirmed to the bridge.
# TYPE gateway_mqtt_messages_out_total counter
gateway_mqtt_messages_out_total{process="worker:gw-bridge-0"} 8
gateway_mqtt_messages_out_total{process="worker:gw-bridge-1"} 12
# HELP gateway_mqtt_publish_seconds Gateway histogram mqtt_publish_seconds.
# TYPE gateway_mqtt_publish_seconds histogram
gateway_mqtt_publish_seconds_bucket{process="worker:gw-bridge-0",reason="qos1",le="0.001"} 0
gateway_mqtt_publish_seconds_bucket{process="worker:gw-bridge-0",reason="qos1",le="0.0025"} 0
gateway_mqtt_publish_seconds_bucket{process="worker:gw-bridge-0",reason="qos1",le="0.005"} 1
gateway_mqtt_publish_seconds_bucket{process="worker:gw-bridge-0",reason="qos1",le="0.01"} 1
gateway_mqtt_publish_seconds_bucket{process="worker:gw-bridge-0",reason="qos1",le="0.025"} 1
gateway_mqtt_publish_seconds_bucket{process="worker:gw-bridge-0",reason="qos1",le="0.05"} 1
gateway_mqtt_publish_seconds_bucket{process="worker:gw-bridge-0",reason="qos1",le="0.1"} 1
gateway_mqtt_publish_seconds_bucket{process="worker:gw-bridge-0",reason="qos1",le="0.25"} 1
gateway_mqtt_publish_seconds_bucket{process="worker:gw-bridge-0",reason="qos1",le="0.5"} 1
gateway_mqtt_publish_seconds_bucket{process="worker:gw-bridge-0",reason="qos1",le="1.0"} 2
gateway_mqtt_publish_seconds_bucket{process="worker:gw-bridge-0",reason="qos1",le="2.5"} 2
gateway_mqtt_publish_seconds_bucket{process="worker:gw-bridge-0",reason="qos1",le="5.0"} 2
gateway_mqtt_publish_seconds_bucket{process="worker:gw-bridge-0",reason="qos1",le="10.0"} 2
gateway_mqtt_publish_seconds_bucket{process="worker:gw-bridge-0",reason="qos1",le="+Inf"} 2
gateway_mqtt_publish_seconds_sum{process="worker:gw-bridge-0",reason="qos1"} 0.704
gateway_mqtt_publish_seconds_count{process="worker:gw-bridge-0",reason="qos1"} 2
# HELP gateway_payload_decode_failures_total Device payloads their codec could not decode.
# TYPE gateway_payload_decode_failures_total counter
gateway_payload_decode_failures_total{process="web",codec="json"} 1
# HELP gateway_presence_events_total Presence changes announced to rooms, by event.
# TYPE gateway_presence_events_total counter
gateway_presence_events_total{process="web",event="join"} 2
# HELP gateway_queue_fill_ratio Gateway gauge queue_fill_ratio.
# TYPE gateway_queue_fill_ratio gauge
gateway_queue_fill_ratio{process="web",reason="history"} 0.25
# HELP gateway_test_jobs_total Jobs of a test, by kind.
# TYPE gateway_test_jobs_total counter
gateway_test_jobs_total{process="web",kind="import"} 4
# HELP gateway_ws_closed_total WebSocket connections closed by the gateway, by reason.
# TYPE gateway_ws_closed_total counter
gateway_ws_closed_total{process="web",reason="odd \\"reason\\"\\\\ with\\na newline"} 1
# HELP gateway_ws_connections WebSocket connections open in this process.
# TYPE gateway_ws_connections gauge
gateway_ws_connections{process="web"} 1
# HELP gateway_ws_errors_total Error frames sent to WebSocket clients, by code.
# TYPE gateway_ws_errors_total counter
gateway_ws_errors_total{process="web",code="rate_limited"} 1
"""  # noqa: E501
