"""A strict reader of the Prometheus text format (0.0.4), enough to check what we expose."""

import math
import re
from dataclasses import dataclass, field

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"'
SAMPLE_RE = re.compile(
    rf"^(?P<name>{_NAME})(?P<labels>\{{(?:{_LABEL}(?:,{_LABEL})*)?\}})?"
    r" (?P<value>-?[0-9.eE+-]+|[+-]Inf|NaN)$"
)
HELP_RE = re.compile(rf"^# HELP (?P<name>{_NAME}) (?P<text>.*)$")
TYPE_RE = re.compile(rf"^# TYPE (?P<name>{_NAME}) (?P<kind>counter|gauge|histogram)$")
_LABEL_PAIR_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"')
_UNESCAPE = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}
_HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


@dataclass
class Family:
    name: str
    help: str
    kind: str
    samples: list[Sample] = field(default_factory=list)


def unescape(value: str) -> str:
    return re.sub(r'\\[\\"n]', lambda m: _UNESCAPE[m.group()], value)


def parse_exposition(text: str) -> dict[str, Family]:
    """The families in ``text``, failing on anything the format does not allow.

    Every family has one HELP then one TYPE line before its samples, its samples are together,
    no series appears twice, and a histogram's buckets are cumulative, end with ``+Inf`` and
    agree with its ``_count``.
    """
    assert text.endswith("\n"), "the exposition must end with a newline"
    families: dict[str, Family] = {}
    current: Family | None = None
    pending_help: tuple[str, str] | None = None
    seen: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
    for number, line in enumerate(text[:-1].split("\n"), 1):
        where = f"line {number}: {line!r}"
        if (match := HELP_RE.match(line)) is not None:
            assert pending_help is None, f"{where}: two HELP lines"
            assert match["name"] not in families, f"{where}: family declared twice"
            pending_help = (match["name"], match["text"])
            continue
        if (match := TYPE_RE.match(line)) is not None:
            assert pending_help is not None, f"{where}: TYPE without HELP before it"
            assert pending_help[0] == match["name"], f"{where}: TYPE of another family than HELP"
            current = Family(match["name"], pending_help[1], match["kind"])
            families[current.name] = current
            pending_help = None
            continue
        match = SAMPLE_RE.match(line)
        assert match is not None, f"{where}: not a HELP, TYPE or sample line"
        assert current is not None, f"{where}: a sample before any HELP and TYPE"
        assert pending_help is None, f"{where}: a sample between HELP and TYPE"
        name = match["name"]
        allowed = {current.name}
        if current.kind == "histogram":
            allowed = {current.name + suffix for suffix in _HISTOGRAM_SUFFIXES}
        assert name in allowed, f"{where}: not a sample of {current.name} ({current.kind})"
        labels = {k: unescape(v) for k, v in _LABEL_PAIR_RE.findall(match["labels"] or "")}
        key = (name, tuple(sorted(labels.items())))
        assert key not in seen, f"{where}: a series twice"
        seen.add(key)
        current.samples.append(Sample(name, labels, float(match["value"])))
    assert pending_help is None, "HELP at the end without TYPE and samples"
    for family in families.values():
        assert family.samples, f"{family.name} has no samples"
        if family.kind == "histogram":
            _check_histogram(family)
    return families


def _check_histogram(family: Family) -> None:
    series: dict[tuple[tuple[str, str], ...], dict[str, list[Sample]]] = {}
    for sample in family.samples:
        rest = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "le"))
        suffix = sample.name[len(family.name) :]
        series.setdefault(rest, {}).setdefault(suffix, []).append(sample)
    for labels, parts in series.items():
        buckets = parts.get("_bucket", [])
        assert buckets, f"{family.name}{labels}: no buckets"
        bounds = [float(b.labels["le"]) for b in buckets]
        assert bounds == sorted(bounds), f"{family.name}{labels}: buckets out of order"
        assert bounds[-1] == math.inf, f"{family.name}{labels}: no +Inf bucket"
        assert buckets[-1].labels["le"] == "+Inf"
        counts = [b.value for b in buckets]
        assert counts == sorted(counts), f"{family.name}{labels}: buckets not cumulative"
        assert len(parts.get("_sum", [])) == 1, f"{family.name}{labels}: no single _sum"
        assert len(parts.get("_count", [])) == 1, f"{family.name}{labels}: no single _count"
        assert parts["_count"][0].value == counts[-1], f"{family.name}{labels}: +Inf != _count"


def samples(families: dict[str, Family], name: str, **labels: str) -> list[Sample]:
    """The samples named ``name`` whose labels include ``labels``."""
    found = []
    for family in families.values():
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                found.append(sample)
    return found
