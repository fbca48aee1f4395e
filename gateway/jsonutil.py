"""JSON as every edge parses it: strict, so what enters a room can be sent to any browser."""

import json
import math
from typing import Any


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number out of range: {text[:32]}")
    return value


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_json(text: str | bytes) -> Any:
    """Parse standard JSON, refusing NaN, Infinity and numbers that overflow a double.

    Raises:
        ValueError: the text is not standard JSON or nests too deeply.
    """
    try:
        return json.loads(text, parse_float=_finite, parse_constant=_no_constants)
    except RecursionError as exc:
        raise ValueError("JSON nests too deeply") from exc


def dumps(value: Any) -> str:
    """Compact JSON text; the inverse of `parse_json`."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
