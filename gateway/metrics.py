"""Process-wide metrics: counters, gauges and latency histograms, and their exposition.

Every message the gateway drops or refuses moves a counter. Each metric is keyed by a name and
one label value (a reason, a source...); the label's name is per family (see `describe`). The
recording functions are on the hot path: a lock, a dict lookup and an addition, nothing more.

`exposition` renders the Prometheus text format (0.0.4) through prometheus_client, at scrape
time: a collector (`StatesCollector`) turns the recorded numbers into metric families. A process
can also `export_state` as JSON, so another one can show it: daphne's ``/metrics`` includes the
bridge workers' states, which they publish with their heartbeats, each under its own ``process``
label.
"""

import logging
import math
import threading
import time
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal, TypedDict, TypeGuard

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_counts: Counter[tuple[str, str]] = Counter()
_gauges: dict[tuple[str, str], float] = {}

# Upper bounds (seconds) of the histogram buckets, suited to latencies; +Inf is implicit.
BUCKETS: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
PREFIX = "gateway_"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # what generate_latest writes


class _Histogram:
    """Observations per bucket (not cumulative; the last is +Inf), their sum and count."""

    __slots__ = ("count", "counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.sum = 0.0
        self.count = 0


_histograms: dict[tuple[str, str], _Histogram] = {}


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


DROP_LOG_SECONDS = 10.0  # one log line per reason at most this often; the counter counts all
DROP_DETAIL_CHARS = 300
_drops_logged: dict[str, tuple[float, int]] = {}  # reason -> (last logged, left out since)


def dropped(reason: str, detail: str, amount: int = 1) -> None:
    """Count ``amount`` dropped messages and say why in the log.

    ``detail`` may hold what a stranger sent (a topic, say): it is cut short and escaped, and
    a flood of drops logs a line per reason every `DROP_LOG_SECONDS`, saying how many it left
    out, rather than a line per drop.
    """
    inc("messages_dropped", reason, amount)
    now = time.monotonic()
    with _lock:
        last, left_out = _drops_logged.get(reason, (-math.inf, 0))
        if now - last < DROP_LOG_SECONDS:
            _drops_logged[reason] = (last, left_out + amount)
            return
        _drops_logged[reason] = (now, 0)
    safe = detail[:DROP_DETAIL_CHARS].encode("unicode_escape").decode("ascii")
    more = f" ({left_out} more since the last such line)" if left_out else ""
    logger.warning("message dropped (%s): %s%s", reason, safe, more)


def set_gauge(name: str, value: float, label: str = "") -> None:
    """Set the gauge ``name`` for ``label`` to ``value``."""
    with _lock:
        _gauges[name, label] = value


def add_gauge(name: str, delta: float, label: str = "") -> None:
    """Move the gauge ``name`` for ``label`` by ``delta`` (negative to lower it)."""
    key = (name, label)
    with _lock:
        _gauges[key] = _gauges.get(key, 0) + delta


def get_gauge(name: str, label: str = "") -> float:
    """The current value of a gauge (0 when never set)."""
    with _lock:
        return _gauges.get((name, label), 0)


def observe(name: str, seconds: float, label: str = "") -> None:
    """Record one observation (a latency, in seconds) in the histogram ``name``."""
    with _lock:
        histogram = _histograms.get((name, label))
        if histogram is None:
            histogram = _histograms[name, label] = _Histogram()
        # bisect_left: a value equal to a bound belongs to that bucket (``le``).
        histogram.counts[bisect_left(BUCKETS, seconds)] += 1
        histogram.sum += seconds
        histogram.count += 1


# Exported state: what a process's metrics look like as JSON.


class HistogramState(TypedDict):
    """One histogram series: cumulative counts by upper bound (``"+Inf"`` last), sum, count."""

    buckets: dict[str, int]
    sum: float
    count: int


class ExportedState(TypedDict):
    """Every metric of a process, by name, then by label value."""

    counters: dict[str, dict[str, int]]
    gauges: dict[str, dict[str, float]]
    histograms: dict[str, dict[str, HistogramState]]


def export_state() -> ExportedState:
    """A JSON-serialisable copy of every counter, gauge and histogram of this process."""
    state = ExportedState(counters={}, gauges={}, histograms={})
    with _lock:
        for (name, label), count in _counts.items():
            state["counters"].setdefault(name, {})[label] = count
        for (name, label), value in _gauges.items():
            state["gauges"].setdefault(name, {})[label] = value
        for (name, label), histogram in _histograms.items():
            state["histograms"].setdefault(name, {})[label] = _histogram_state(histogram)
    return state


def _histogram_state(histogram: _Histogram) -> HistogramState:
    buckets: dict[str, int] = {}
    total = 0
    for bound, count in zip((*BUCKETS, math.inf), histogram.counts, strict=True):
        total += count
        buckets[_number(bound)] = total
    return HistogramState(buckets=buckets, sum=histogram.sum, count=histogram.count)


# Families: their help text and the name of their label.

_KNOWN_FAMILIES = (
    ("messages_published", "Messages put into rooms, by the edge they came from.", "source"),
    ("messages_dropped", "Messages dropped or refused, by reason.", "reason"),
    ("mqtt_messages_in", "Device messages the bridge handed on to rooms.", "reason"),
    ("mqtt_messages_out", "Room messages the broker confirmed to the bridge.", "reason"),
    ("mqtt_messages_not_published", "Room messages not published to MQTT, by reason.", "reason"),
    ("mqtt_publish_timeouts", "Publications not confirmed within the publish timeout.", "reason"),
    ("mqtt_connects", "Connections of the bridge to its broker.", "reason"),
    ("mqtt_reconnect_attempts", "Failed broker connections, each followed by a retry.", "reason"),
    ("mqtt_subscriptions_refused", "Subscriptions the broker refused.", "reason"),
    ("mqtt_own_publications_skipped", "The bridge's own publications it ignored.", "reason"),
    ("embedded_broker_refused", "What the embedded broker refused, by reason.", "reason"),
    ("embedded_broker_dropped", "Messages the embedded broker dropped, by reason.", "reason"),
    ("dynsec_changes", "Changes sent to the broker's dynamic security, or failed syncs.", "reason"),
    ("payload_decode_failures", "Device payloads their codec could not decode.", "codec"),
    ("ws_refused", "WebSocket connections refused, by reason.", "reason"),
    ("ws_closed", "WebSocket connections closed by the gateway, by reason.", "reason"),
    ("ws_errors", "Error frames sent to WebSocket clients, by code.", "code"),
    ("ws_connections", "WebSocket connections open in this process.", "room"),
    ("bridge_broker_connected", "1 while the bridge is connected to its broker, else 0.", "reason"),
    ("bridge_heartbeat_failures", "Bridge heartbeats that could not be written.", "reason"),
    ("metrics_remote_failures", "Remote metric states that could not be read.", "reason"),
    (
        "delivery_latency_seconds",
        "Seconds from a message entering its room to its delivery to a socket.",
        "reason",
    ),
    ("duplicates_removed", "Copies a socket dropped (redeliveries, welcome overlap).", "reason"),
    ("presence_events", "Presence changes announced to rooms, by event.", "event"),
    ("retained_states_refused", "Retained messages not kept: their room is full.", "reason"),
    ("history_write_failures", "Batches of history that could not be written.", "reason"),
    ("history_rows_lost", "History rows the database never got, by reason.", "reason"),
    ("handoff_retries", "Device messages retried while the channel layer failed.", "reason"),
    (
        "redis_replica_wait_timeouts",
        "Device messages acknowledged before a replica confirmed them (REDIS_REPLICA_WAIT_MS).",
        "reason",
    ),
    (
        "mqtt_message_ids_ignored",
        "Device message-id properties ignored: not 1-64 printable characters.",
        "reason",
    ),
    ("redis_epochs", "Redis master changes this process met (failovers, restarts).", "reason"),
    (
        "rooms_held_up",
        "Rooms whose sockets were told their Redis (or shard) cannot be reached.",
        "reason",
    ),
    ("bridge_held", "Device messages the bridge holds for Redis shards that are down.", "reason"),
    ("frames_fanned_out", "Frames this process wrote to its sockets of a room.", "reason"),
    ("mqtt_hook_denied", "Brokers' HTTP hook checks answered with a denial.", "check"),
    ("mqtt_hook_errors", "Brokers' HTTP hook requests that failed (answered: deny).", "endpoint"),
    ("mqtt_hook_refused", "Brokers' HTTP hook requests refused unanswered, by reason.", "reason"),
    ("compat_unpatched", "Libraries at a version protocols/compat.py was not made for.", "library"),
    ("rooms_refused", "New rooms refused: the gateway holds its maximum.", "where"),
    ("api_throttled", "HTTP API requests without a token refused for their rate.", "reason"),
    ("presence_refused", "Members not listed: their room's presence is full.", "kind"),
    ("rooms_forgotten", "Idle rooms forgotten, with their history and state.", "reason"),
    ("room_sweep_failures", "Sweeps for idle rooms that failed.", "reason"),
    (
        "fanout_rooms",
        "Rooms this process has sockets in (one transport membership each).",
        "reason",
    ),
)
_families: dict[str, tuple[str, str]] = {
    name: (text, label) for name, text, label in _KNOWN_FAMILIES
}


def describe(name: str, help_text: str, *, label: str = "reason") -> None:
    """Document the metric family ``name``: its help text and what its label value means."""
    _families[name] = (help_text, label)


# The Prometheus text format (0.0.4), through prometheus_client.

Kind = Literal["counter", "gauge", "histogram"]
Source = tuple[str | None, Mapping[str, Any]]  # (``process`` label or None, exported state)

_FAMILY_TYPES: dict[Kind, type[CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily]] = {
    "counter": CounterMetricFamily,
    "gauge": GaugeMetricFamily,
    "histogram": HistogramMetricFamily,
}


class _Family:
    """A family as it is gathered from every source.

    A prometheus_client family fixes its label names, but the series of one family differ in
    theirs: an empty label value is left out, and a source may have no ``process`` label. So
    each series is made in a family of its own label names, and its samples join this one's.
    """

    __slots__ = ("help", "kind", "label", "metric", "name")

    def __init__(self, name: str, kind: Kind, metric: str) -> None:
        self.name = name
        self.kind = kind
        self.help, self.label = _families.get(metric, (f"Gateway {kind} {metric}.", "reason"))
        self.metric = _FAMILY_TYPES[kind](name, self.help, labels=())

    def add(self, labels: list[tuple[str, str]], value: float) -> None:
        """A counter's or a gauge's series."""
        kind = CounterMetricFamily if self.kind == "counter" else GaugeMetricFamily
        series = kind(self.name, self.help, labels=[name for name, _ in labels])
        series.add_metric([label for _, label in labels], value)
        self.metric.samples.extend(series.samples)

    def add_histogram(
        self, labels: list[tuple[str, str]], buckets: list[tuple[str, float]], total: float
    ) -> None:
        """A histogram's series: cumulative counts by ``le`` (``+Inf`` last), and their sum."""
        series = HistogramMetricFamily(self.name, self.help, labels=[name for name, _ in labels])
        series.add_metric([label for _, label in labels], buckets, total)
        self.metric.samples.extend(series.samples)


class StatesCollector(Collector):
    """A collector of exported states: this process's, and the bridge workers' that reach the
    web processes with their heartbeats in Redis (see `gateway.bridge_state`).

    ``sources`` is called at each collection and gives ``(process label, exported state)``
    pairs; each source's series have its ``process`` label, none when it is None. A family
    appears once, with the series of every source. Entries that are not numbers (a state from
    another version, say) are left out rather than break the page.
    """

    def __init__(self, sources: Callable[[], Iterable[Source]]) -> None:
        self._sources = sources

    def collect(self) -> Iterator[Metric]:
        families = _gather(self._sources())
        for name in sorted(families):
            metric = families[name].metric
            if metric.samples:
                yield metric


def exposition(
    extra_snapshots: Sequence[tuple[str, Mapping[str, Any]]] = (),
    *,
    process: str | None = None,
) -> str:
    """This process's metrics, and those of ``extra_snapshots``, in the Prometheus text format.

    Args:
        extra_snapshots: ``(process label, exported state)`` of other processes.
        process: the ``process`` label of this process's samples; none when None.
    """
    return _generate(StatesCollector(lambda: [(process, export_state()), *extra_snapshots]))


def render(sources: Iterable[Source]) -> str:
    """Exported states in the Prometheus text format, each source under its ``process`` label
    (see `StatesCollector`)."""
    listed = list(sources)
    return _generate(StatesCollector(lambda: listed))


def _generate(collector: Collector) -> str:
    # A registry of its own per page: the sources differ from one request to the next. Without
    # describe(), registering collects nothing; counters are made without ``_created``.
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return generate_latest(registry).decode()


def _gather(sources: Iterable[Source]) -> dict[str, _Family]:
    """The families of ``sources``, by the name they are exposed under."""
    families: dict[str, _Family] = {}

    def family(metric: str, kind: Kind) -> _Family | None:
        name = PREFIX + _metric_name(metric)
        if kind == "counter" and not name.endswith("_total"):
            name += "_total"
        found = families.get(name)
        if found is None:
            found = families[name] = _Family(name, kind, metric)
        return found if found.kind == kind else None  # a clash of kinds: the first one wins

    for process, state in sources:
        base = [("process", process)] if process is not None else []
        scalars: tuple[tuple[Kind, str], ...] = (("counter", "counters"), ("gauge", "gauges"))
        for kind, key in scalars:
            for metric, by_label in _items(state.get(key)):
                fam = family(metric, kind)
                for label, value in _items(by_label):
                    if fam is not None and _is_number(value):
                        fam.add([*base, *_label(fam.label, label)], value)
        for metric, by_label in _items(state.get("histograms")):
            fam = family(metric, "histogram")
            for label, series in _items(by_label):
                parsed = _histogram(series)
                if fam is not None and parsed is not None:
                    fam.add_histogram([*base, *_label(fam.label, label)], *parsed)
    return families


def _histogram(series: Any) -> tuple[list[tuple[str, float]], float] | None:
    """The buckets (by ``le``, in order) and sum of an exported histogram series, or None when
    it is not one: its buckets must be numbered, not negative, end with ``+Inf`` and agree
    with its count."""
    if not isinstance(series, Mapping):
        return None
    total, count = series.get("sum"), series.get("count")
    bounds: list[tuple[float, int]] = []
    for le, cumulative in _items(series.get("buckets")):
        try:
            bound = float(le)
        except ValueError:
            return None
        if not bound >= 0 or not isinstance(cumulative, int) or isinstance(cumulative, bool):
            return None  # prometheus_client leaves out the sum and count of negative buckets
        bounds.append((bound, cumulative))
    bounds.sort()
    if not _is_number(total) or not _is_number(count) or not bounds or bounds[-1][0] != math.inf:
        return None
    if bounds[-1][1] != count:  # the +Inf bucket gives the exposed count
        return None
    return [(_number(bound), cumulative) for bound, cumulative in bounds], total


def _items(value: Any) -> list[tuple[str, Any]]:
    if not isinstance(value, Mapping):
        return []
    return [(key, item) for key, item in value.items() if isinstance(key, str)]


def _is_number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _label(name: str, value: str) -> list[tuple[str, str]]:
    return [(name, value)] if value else []


def _metric_name(name: str) -> str:
    # Names come from code, but a state read from elsewhere must not break the format.
    return "".join(c if c.isascii() and (c.isalnum() or c in "_:") else "_" for c in name)


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)
