"""Payload codecs: every payload reaches the room, decodable or not, and failures are counted."""

import base64
import json
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridges.codecs import Decoded, _registry, get_codec
from gateway import jsonutil, metrics
from gateway.jsonutil import (
    INT_MAX,
    INT_MIN,
    MESSAGE_MAX_DEPTH,
    _parse_strictly,
    dumps,
    parse_json,
)
from tests.fuzz.invariants import (
    check_decode,
    check_parse_json,
    check_round_trip,
    check_sendable,
)

# Strings a message may hold: any text but U+0000, which the gateway refuses (PostgreSQL's
# jsonb cannot store it).
json_texts = st.text(st.characters(exclude_characters="\x00", exclude_categories=("Cs",)))


def json_values(integers: st.SearchStrategy[int] | None = None) -> st.SearchStrategy[Any]:
    integers = st.integers() if integers is None else integers
    scalars = st.none() | st.booleans() | integers | json_texts
    scalars |= st.floats(allow_nan=False, allow_infinity=False)
    return st.recursive(
        scalars,
        lambda kids: st.lists(kids, max_size=4) | st.dictionaries(json_texts, kids, max_size=4),
        max_leaves=12,
    )


# What MessagePack can carry at all: integers of at most 64 bits.
msgpack_integers = st.integers(min_value=-(2**63), max_value=2**64 - 1)


@given(json_values(msgpack_integers))
def test_json_round_trips(value: Any) -> None:
    codec = get_codec("json")
    assert codec.decode(codec.encode(value)) == Decoded(value)


def test_json_with_an_integer_no_channel_layer_carries_arrives_as_its_text() -> None:
    payload = b'{"count": 18446744073709551616}'
    assert get_codec("json").decode(payload) == Decoded(payload.decode())


@given(json_values(msgpack_integers))
def test_msgpack_arrives_as_the_same_json_value(value: Any) -> None:
    codec = get_codec("msgpack")
    decoded = codec.decode(msgpack.packb(value, use_bin_type=True))
    assert decoded == Decoded(value)
    # Browsers get the same JSON text: 1, 1.0 and true stay apart (they compare equal above).
    assert dumps(decoded.message) == dumps(value)


@given(st.binary())
def test_binary_round_trips_through_base64(payload: bytes) -> None:
    codec = get_codec("binary")
    decoded = codec.decode(payload)
    assert decoded.base64
    assert base64.b64decode(decoded.message) == payload
    assert codec.encode(decoded.message) == payload


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b'{"t": 21.5}', {"t": 21.5}),
        (b"21.5", 21.5),
        (b"hello", "hello"),
        (b"NaN", "NaN"),
        (b"1e999", "1e999"),
        (b"[" * 5000, "[" * 5000),
        (b"", ""),
    ],
)
def test_json_codec_keeps_text_that_is_not_json_as_text(payload: bytes, message: Any) -> None:
    assert get_codec("json").decode(payload) == Decoded(message)


@pytest.mark.parametrize("name", ["json", "text", "msgpack"])
def test_undecodable_payloads_arrive_as_base64_and_are_counted(name: str) -> None:
    payload = b"\xc1\xff\xfe"  # invalid UTF-8, and a byte msgpack never uses
    before = metrics.get("payload_decode_failures", name)
    decoded = get_codec(name).decode(payload)
    assert decoded == Decoded(base64.b64encode(payload).decode(), base64=True)
    assert metrics.get("payload_decode_failures", name) == before + 1


def test_msgpack_with_non_json_keys_is_not_passed_off_as_json() -> None:
    decoded = get_codec("msgpack").decode(msgpack.packb({1: "x"}))
    assert decoded.base64


def test_unknown_codec_names_the_known_ones() -> None:
    with pytest.raises(KeyError, match=r"binary.*json.*msgpack.*text"):
        get_codec("yaml")


# Strict JSON and every codec, on anything at all.

# Pieces of JSON and of what is almost JSON, so that joined at random they reach deep into
# the parser: numbers at and past the bounds, constants JSON lacks, escapes, a BOM, NUL.
JSON_PIECES = [
    *'{}[]:," -.eE+0123456789',
    '"message"',
    '"type"',
    "true",
    "false",
    "null",
    "NaN",
    "Infinity",
    "1e999",
    "1e-999",
    str(INT_MAX),
    str(INT_MAX + 1),
    str(INT_MIN),
    str(INT_MIN - 1),
    "\\u00e9",
    "\\n",
    "\\x",
    "\x00",
    "\ufeff",
    "é",
]
json_like_texts = st.lists(st.sampled_from(JSON_PIECES) | st.text(max_size=2), max_size=40).map(
    "".join
)
# MessagePack of values JSON has no room for: bytes, NaN, non-string keys, extension types.
msgpack_extras = st.recursive(
    st.none()
    | st.booleans()
    | msgpack_integers
    | st.floats()
    | st.text()
    | st.binary(max_size=8)
    | st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=4)),
    lambda kids: (
        st.lists(kids, max_size=4)
        | st.dictionaries(st.text() | st.integers(0, 9) | st.binary(max_size=2), kids, max_size=4)
    ),
    max_leaves=10,
)
payloads = (
    st.binary()
    | json_like_texts.map(str.encode)
    | json_values(msgpack_integers).map(lambda value: dumps(value).encode())
    | json_values(msgpack_integers).map(lambda value: msgpack.packb(value, use_bin_type=True))
    | msgpack_extras.map(lambda value: msgpack.packb(value, use_bin_type=True))
)


@settings(max_examples=200, deadline=None)
@given(st.text() | json_like_texts)
def test_parse_json_refuses_with_value_error_only_and_what_it_reads_can_be_sent(
    text: str,
) -> None:
    check_parse_json(text)


@settings(max_examples=200, deadline=None)
@given(st.binary() | json_like_texts.map(lambda text: text.encode("utf-8", "surrogatepass")))
def test_parse_json_of_bytes_refuses_with_value_error_only(data: bytes) -> None:
    try:
        value = parse_json(data)
    except ValueError:
        return
    assert parse_json(dumps(value)) == value


@pytest.mark.parametrize(
    ("text", "value"),
    [
        (str(INT_MAX), 2**64 - 1),
        (str(INT_MIN), -(2**63)),
        ("-0", 0),
        ("1.7976931348623157e308", 1.7976931348623157e308),
        ("-1.7976931348623157e308", -1.7976931348623157e308),
        ("5e-324", 5e-324),
        ("1e-400", 0.0),
        ('"\\ud83d\\ude00"', "😀"),
    ],
)
def test_parse_json_reads_the_edges_of_what_it_allows(text: str, value: Any) -> None:
    assert parse_json(text) == value
    assert parse_json(text.encode()) == value
    assert parse_json(dumps(value)) == value


def _outcome(parse: Any, data: str | bytes) -> str:
    """What ``parse`` makes of ``data``, exactly: the value's repr (1 and 1.0 differ), or
    that it refused."""
    try:
        return repr(parse(data))
    except ValueError:
        return "refused"


@settings(max_examples=300, deadline=None)
@given(
    json_like_texts
    | json_values().map(json.dumps)
    | st.floats().map(json.dumps)
    | st.integers(min_value=-(2**70), max_value=2**70).map(str)
)
def test_parse_json_reads_exactly_what_the_strict_parser_reads(text: str) -> None:
    # The fast parser may only be faster: the same values, the same refusals.
    for data in (text, text.encode("utf-8", "surrogatepass")):
        assert _outcome(parse_json, data) == _outcome(_parse_strictly, data)


def test_a_message_with_an_integer_past_64_bits_cannot_be_sent() -> None:
    # Python code may build one; no edge could write it.
    with pytest.raises(ValueError, match="cannot be written as JSON"):
        jsonutil.check_sendable({"n": 2**64})


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (str(INT_MAX + 1), "integer out of range"),
        (str(INT_MIN - 1), "integer out of range"),
        ("9" * 5000, "integer out of range"),
        ("1.8e308", "number out of range"),
        ("-1e999", "number out of range"),
        ("NaN", "NaN is not JSON"),
        ("-Infinity", "-Infinity is not JSON"),
        ("[" * 100_000, "nests too deeply"),
        ('{"a":' * 50_000, "nests too deeply"),
        (b"\xff\xfe\xfd", "can't decode"),
        (b'"\xc0\x80"', "can't decode"),
    ],
)
def test_parse_json_refuses_with_a_value_error_that_says_why(
    data: str | bytes, reason: str
) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_json(data)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(sorted(_registry)), payloads)
def test_every_codec_decodes_any_payload_or_carries_it_as_base64(name: str, payload: bytes) -> None:
    codec = get_codec(name)
    check_round_trip(codec, check_decode(codec, payload), payload)


# Once bugs: values that parse_json or a codec let in but the gateway could not send on.


def test_msgpack_nested_deeper_than_json_can_write_arrives_as_base64() -> None:
    payload = b"\x91" * 1000 + b"\xc0"  # [[[...[nil]...]]]
    decoded = check_decode(get_codec("msgpack"), payload)  # counted as a failure, too
    assert decoded == Decoded(base64.b64encode(payload).decode(), base64=True)


def test_json_with_a_lone_surrogate_escape_arrives_as_text_or_can_be_sent_on() -> None:
    check_decode(get_codec("json"), b'{"t": "x\\udfff"}')


@pytest.mark.parametrize(
    "data",
    [
        b'"\\ud800"',
        '"\ud800"'.encode("utf-16-le", "surrogatepass"),
        b'"\xed\xa0\x80"',
    ],
)
def test_parse_json_refuses_lone_surrogates_or_they_can_be_sent_on(data: bytes) -> None:
    check_parse_json(data)


def test_a_message_as_deep_as_the_edges_allow_can_be_sent_on() -> None:
    low, high = 1, 5000
    while low < high:
        middle = (low + high + 1) // 2
        try:
            parse_json("[" * middle + "]" * middle, MESSAGE_MAX_DEPTH)
        except ValueError:
            high = middle - 1
        else:
            low = middle
    assert low == MESSAGE_MAX_DEPTH  # a fixed bound, wherever it is called from
    check_sendable(parse_json("[" * low + "]" * low))


@pytest.mark.parametrize("codec", ["json", "text"])
def test_text_holding_nul_arrives_as_base64_whole(codec: str) -> None:
    decoded = check_decode(get_codec(codec), b"temp\x00=21")
    assert decoded.base64


def test_json_with_a_nul_escape_arrives_as_its_text() -> None:
    decoded = check_decode(get_codec("json"), b'{"t": "\\u0000"}')
    assert (decoded.message, decoded.base64) == ('{"t": "\\u0000"}', False)
