"""Reading a client's frame: the frame whole, an error frame that says why not, or a close."""

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.jsonutil import MESSAGE_MAX_DEPTH, nests_deeper_than
from protocols.frames import CLOSE_TOO_BIG, Refusal, read_frame
from tests.fuzz.invariants import MUST_BE_JSON, check_frame, check_sendable
from tests.unit.test_codecs import json_like_texts, json_texts, json_values, msgpack_integers

DEFAULT_LIMIT = 64 * 1024
# Any str: lone surrogates too (a socket never delivers them, but read_frame must not mind).
any_texts = st.text() | st.text(alphabet=st.characters()) | json_like_texts
limits = st.integers(min_value=1, max_value=DEFAULT_LIMIT) | st.sampled_from([1, 2, 13, 1024])
frame_values = json_values(msgpack_integers)
other_keys = st.dictionaries(
    json_texts.filter(lambda key: key != "message"), frame_values, max_size=3
)


def utf8_size(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


@settings(max_examples=200, deadline=None)
@given(st.none() | any_texts, limits)
def test_any_frame_is_read_or_refused_and_only_a_big_one_closes(
    text: str | None, limit: int
) -> None:
    check_frame(text, limit)


@settings(max_examples=200, deadline=None)
@given(frame_values, other_keys, st.booleans(), st.sampled_from([None, 0, 2]))
def test_any_json_message_comes_back_intact(
    message: Any, others: dict[str, Any], ascii_only: bool, indent: int | None
) -> None:
    frame = {**others, "message": message}
    text = json.dumps(frame, ensure_ascii=ascii_only, indent=indent)
    assert read_frame(text, utf8_size(text)) == frame
    refused = read_frame(text, utf8_size(text) - 1)
    assert isinstance(refused, Refusal)
    assert refused.close == CLOSE_TOO_BIG


@settings(max_examples=200, deadline=None)
@given(
    (st.text(alphabet=st.characters()) | json_like_texts).filter(lambda t: utf8_size(t) > 1),
    st.data(),
)
def test_a_frame_over_the_limit_in_utf8_bytes_closes_with_1009(text: str, data: Any) -> None:
    size = utf8_size(text)
    limit = data.draw(st.integers(min_value=1, max_value=size - 1), "limit")
    refused = read_frame(text, limit)
    assert isinstance(refused, Refusal)
    assert (refused.code, refused.close) == ("frame_too_big", CLOSE_TOO_BIG)


@settings(max_examples=200, deadline=None)
@given(frame_values.filter(lambda value: not (isinstance(value, dict) and "message" in value)))
def test_json_that_is_not_an_object_with_a_message_is_an_invalid_frame(value: Any) -> None:
    refused = read_frame(json.dumps(value), DEFAULT_LIMIT)
    assert isinstance(refused, Refusal)
    assert (refused.code, refused.close) == ("invalid_frame", None)
    assert '"message"' in refused.detail  # says what to send instead


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "Expecting value"),
        ("   ", "Expecting value"),
        ("hello", "Expecting value"),
        ("{'message': 1}", "Expecting property name"),
        ('{"message": 1', "Expecting ',' delimiter"),
        ('{"message": 1} {"message": 2}', "Extra data"),
        ('\ufeff{"message": 1}', "BOM"),
        ("NaN", "NaN is not JSON"),
        ('{"message": NaN}', "NaN is not JSON"),
        ('{"message": Infinity}', "Infinity is not JSON"),
        ('{"message": -Infinity}', "-Infinity is not JSON"),
        ('{"message": 1e999}', "number out of range: 1e999"),
        ('{"message": -1e999}', "number out of range: -1e999"),
        ('{"message": 18446744073709551616}', "integer out of range"),
        ('{"message": -9223372036854775809}', "integer out of range"),
        ('{"message": ' + "9" * 5000 + "}", "integer out of range"),
        ("[" * 100_000, "nests too deeply"),
        ('{"message":' * 50_000, "nests too deeply"),
        ('{"message": ' + "[" * 2000 + "]" * 2000 + "}", "nests too deeply"),
    ],
)
def test_text_that_is_not_strict_json_gets_an_invalid_json_error(text: str, reason: str) -> None:
    refused = read_frame(text, 1024 * 1024)
    assert isinstance(refused, Refusal)
    assert (refused.code, refused.close) == ("invalid_json", None)
    assert refused.detail.startswith(MUST_BE_JSON)
    assert reason in refused.detail


@pytest.mark.parametrize("limit", [1, DEFAULT_LIMIT])
def test_a_binary_frame_gets_an_error_and_the_socket_stays_open(limit: int) -> None:
    refused = read_frame(None, limit)
    assert isinstance(refused, Refusal)
    assert (refused.code, refused.close) == ("binary_frame", None)


def test_a_frame_is_read_whole_with_a_type_key_of_its_own() -> None:
    # The consumer publishes frame["message"] and nothing else, so a client's "type" is inert.
    text = '{"type": "bridge.shutdown", "message": {"on": true}, "extra": [1]}'
    assert read_frame(text, DEFAULT_LIMIT) == {
        "type": "bridge.shutdown",
        "message": {"on": True},
        "extra": [1],
    }


def test_the_limit_counts_utf8_bytes_not_characters() -> None:
    text = '{"message":"éé"}'  # 16 characters, 18 bytes
    assert read_frame(text, 18) == {"message": "éé"}
    for too_big in (read_frame(text, 17), read_frame("[" * 100_000, 1024)):
        # The size is checked first: an oversized frame closes the socket, even a broken one.
        assert isinstance(too_big, Refusal)
        assert (too_big.code, too_big.close) == ("frame_too_big", CLOSE_TOO_BIG)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"message": [18446744073709551615, -9223372036854775808]}', [2**64 - 1, -(2**63)]),
        (
            '{"message": [1.7976931348623157e308, 5e-324, 1e-400]}',
            [1.7976931348623157e308, 5e-324, 0.0],
        ),
        ('{"message": "\\ud83d\\ude00 \\u00e9 caf\\u00e9"}', "😀 é café"),
        ('{"message": 1, "message": 2}', 2),
        ('{"message": null}', None),
    ],
)
def test_edge_values_arrive_as_written(text: str, message: Any) -> None:
    frame = read_frame(text, DEFAULT_LIMIT)
    assert frame == {"message": message}
    assert not isinstance(frame, Refusal)
    check_sendable(frame["message"])


# Once bugs: frames read_frame accepted that the gateway could not send on.


@pytest.mark.parametrize(
    "text",
    [
        '{"message": "a\\udfffb"}',
        '{"message": {"\\ude00\\ud83d": 1}}',  # a pair in the wrong order: two lone halves
    ],
)
def test_a_lone_surrogate_escape_is_refused_or_can_be_sent_on(text: str) -> None:
    frame = read_frame(text, DEFAULT_LIMIT)
    if isinstance(frame, Refusal):
        assert frame.code == "invalid_json"
    else:
        check_sendable(frame["message"])


def deepest_accepted_frame(limit: int = 1024 * 1024) -> dict[str, Any]:
    """The most deeply nested ``{"message": [[...]]}`` read_frame accepts, here and now."""
    low, high = 1, 5000
    while low < high:
        middle = (low + high + 1) // 2
        text = '{"message": ' + "[" * middle + "]" * middle + "}"
        if isinstance(read_frame(text, limit), Refusal):
            high = middle - 1
        else:
            low = middle
    frame = read_frame('{"message": ' + "[" * low + "]" * low + "}", limit)
    assert not isinstance(frame, Refusal)
    return frame


def test_a_frame_as_deep_as_read_frame_allows_can_be_sent_on() -> None:
    message = deepest_accepted_frame()["message"]
    # A fixed bound, wherever read_frame is called from: exactly MESSAGE_MAX_DEPTH levels.
    assert nests_deeper_than(message, MESSAGE_MAX_DEPTH - 1)
    assert not nests_deeper_than(message, MESSAGE_MAX_DEPTH)
    check_sendable(message)


@pytest.mark.parametrize("frame", ['{"message": "\\u0000"}', '{"message": {"\\u0000": 1}}'])
def test_nul_is_refused_like_a_lone_surrogate(frame: str) -> None:
    refusal = read_frame(frame, 65536)
    assert isinstance(refusal, Refusal)
    assert refusal.code == "invalid_json"
    assert "U+0000" in refusal.detail
