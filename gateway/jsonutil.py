"""JSON as every edge parses it: strict, so what enters a room can be sent to any browser."""

import json
import math
import re
from typing import Any

import orjson


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


# How deep lists and objects may nest: a fixed bound, so that every part of the gateway
# (history, the channel layer's msgpack, welcome frames) can carry what an edge let in, however
# deep its own call stack. A message travels inside envelopes and frames, so it may nest less
# deeply than the JSON the gateway itself reads back.
MAX_DEPTH = 100
MESSAGE_MAX_DEPTH = 64


def nests_deeper_than(value: Any, limit: int) -> bool:
    """Whether ``value`` has lists or dicts nested more than ``limit`` deep (without recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def holds_nul(value: Any) -> bool:
    """Whether any string in ``value`` (object keys included) holds U+0000."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return False


def check_sendable(value: Any, max_depth: int = MESSAGE_MAX_DEPTH) -> None:
    """Refuse a message some edge could not pass on: not JSON, nested more than ``max_depth``
    deep, holding a lone surrogate (which UTF-8 cannot encode) or U+0000 (which PostgreSQL's
    jsonb cannot store).

    Raises:
        ValueError: saying which (TypeError for a value that is not JSON at all).
    """
    if nests_deeper_than(value, max_depth):
        raise ValueError(f"JSON nests too deeply (more than {max_depth} levels)")
    try:
        text = _strict_dumps(value)
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError("a string holds a lone surrogate, which UTF-8 cannot carry") from exc
    # json.dumps writes U+0000 as the escape; a backslash of the text itself is doubled.
    if "\\u0000" in text and holds_nul(value):
        raise ValueError("a string holds U+0000 (NUL), which databases cannot store")
    try:
        dumps(value)  # what every edge writes it with: integers of 64 bits at most
    except orjson.JSONEncodeError as exc:
        raise ValueError(f"cannot be written as JSON: {exc}") from exc


def parse_json(text: str | bytes, max_depth: int = MAX_DEPTH) -> Any:
    """Parse standard JSON, refusing NaN, Infinity, numbers that overflow a double, integers
    outside -2**63 .. 2**64-1, nesting deeper than ``max_depth``, lone surrogates, U+0000 and
    bytes that are not UTF-8.

    Raises:
        ValueError: the text is not such JSON (UnicodeDecodeError for bytes that are not UTF-8).
    """
    # orjson refuses all of these too, except that it reads an integer past 64 bits as a
    # float: text with a run of digits that long, and whatever orjson refuses, is read again
    # by the strict parser, which says why.
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return _parse_strictly(text, max_depth)
    if isinstance(text, bytes | bytearray):
        long_digits = _LONG_DIGITS_BYTES.search(text) is not None
    else:
        long_digits = _LONG_DIGITS.search(text) is not None
    if long_digits:
        return _parse_strictly(text, max_depth)
    _check_depth(value, text, max_depth)
    return value


# 19 digits: the shortest integer outside the range has 20, the longest inside it 20.
_LONG_DIGITS = re.compile("[0-9]{19}")
_LONG_DIGITS_BYTES = re.compile(b"[0-9]{19}")


def _check_depth(value: Any, text: str | bytes, max_depth: int) -> None:
    # Cheap tests first: only text with that many brackets can nest that deep, and only an
    # escape can make a lone surrogate of text that encodes.
    if isinstance(text, bytes | bytearray):
        brackets = text.count(b"[") + text.count(b"{")
        escape = b"\\u" in text
    else:
        brackets = text.count("[") + text.count("{")
        escape = "\\u" in text
    if brackets > max_depth or escape:
        check_sendable(value, max_depth)


def _parse_strictly(text: str | bytes, max_depth: int = MAX_DEPTH) -> Any:
    """`parse_json` with the standard library's parser, refusing what it refuses with a
    reason."""
    if isinstance(text, bytes | bytearray):
        text = text.decode("utf-8")  # json.loads would accept UTF-16 and encoded surrogates
    elif not text.isascii():
        text.encode("utf-8")  # a raw lone surrogate raises UnicodeEncodeError, a ValueError
    try:
        value = json.loads(
            text, parse_float=_finite, parse_int=_bounded_int, parse_constant=_no_constants
        )
    except RecursionError as exc:
        raise ValueError(f"JSON nests too deeply (more than {max_depth} levels)") from exc
    _check_depth(value, text, max_depth)
    return value


def dumps(value: Any) -> str:
    """Compact JSON text; the inverse of `parse_json`. For values `check_sendable` passes
    (NaN, for one, is not refused here)."""
    return dumps_bytes(value).decode("utf-8")


def dumps_bytes(value: Any) -> bytes:
    """`dumps`, as UTF-8 bytes (what a socket is given)."""
    data: bytes = orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)
    return data


def _strict_dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
