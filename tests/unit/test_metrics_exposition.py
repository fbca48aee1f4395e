"""Metrics as Prometheus reads them: counters, gauges, histograms, escaping, merged processes."""

import json
import threading
import uuid
from typing import Any

import pytest

from gateway import metrics
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
    assert 'gateway_messages_published_total{source="mqtt"} 2\n' in text
    assert 'gateway_messages_published_total{source="ws"} 5\n' in text
    assert 'gateway_messages_dropped_total{reason="channel_full"} 3\n' in text
    assert "gateway_mqtt_connects_total 1\n" in text  # no label value, no label
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
    assert f'gateway_{name}_count{{reason="publish"}} 5\n' in text
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
    assert [line.rsplit(" ", 1)[1] for line in text.splitlines()[2:]] == ["+Inf", "NaN", "-2"]
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
