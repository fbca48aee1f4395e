"""Payload codecs: every payload reaches the room, decodable or not, and failures are counted."""

import base64
import json
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridges.codecs import Decoded, get_codec
from gateway import metrics


def json_values(integers: st.SearchStrategy[int] | None = None) -> st.SearchStrategy[Any]:
    integers = st.integers() if integers is None else integers
    scalars = st.none() | st.booleans() | integers | st.text()
    scalars |= st.floats(allow_nan=False, allow_infinity=False)
    return st.recursive(
        scalars,
        lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(), kids, max_size=4),
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
    json.dumps(decoded.message)  # browsers get JSON


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
