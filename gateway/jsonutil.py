"""JSON as every edge parses it: strict, so what enters a room can be sent to any browser."""

import json
import math
from typing import Any


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number out of range: {text[:32]}")
    return value


# Integers the channel layer's msgpack can carry (and every edge can pass on).
INT_MIN, INT_MAX = -(2**63), 2**64 - 1


def _bounded_int(text: str) -> int:
    if len(text) > 20:  # longer than any integer in range: refuse before converting
        raise ValueError(f"integer out of range: {text[:32]}")
    value = int(text)
    if not INT_MIN <= value <= INT_MAX:
        raise ValueError(f"integer out of range: {text[:32]}")
    return value


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_json(text: str | bytes) -> Any:
    """Parse standard JSON, refusing NaN, Infinity, numbers that overflow a double and
    integers outside -2**63 .. 2**64-1.

    Raises:
        ValueError: the text is not standard JSON or nests too deeply.
    """
    try:
        return json.loads(
            text, parse_float=_finite, parse_int=_bounded_int, parse_constant=_no_constants
        )
    except RecursionError as exc:
        raise ValueError("JSON nests too deeply") from exc


def dumps(value: Any) -> str:
    """Compact JSON text; the inverse of `parse_json`."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
