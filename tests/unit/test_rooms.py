"""Room names: the rule every edge relies on to keep names safe as topics and groups."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.errors import InvalidRoomError
from gateway.rooms import MAX_ROOM_LENGTH, is_valid_room, validate_room

ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-"
valid_rooms = st.builds(
    lambda first, rest: first + rest,
    st.sampled_from(ALPHABET.replace(".", "").replace("-", "")),
    st.text(alphabet=ALPHABET, max_size=MAX_ROOM_LENGTH - 1),
)


@pytest.mark.parametrize("name", ["kitchen", "a", "Room_1", "site-42.north", "_x", "9", "x" * 64])
def test_valid_names_are_accepted(name: str) -> None:
    assert validate_room(name) == name


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("", "empty"),
        ("x" * 65, "longer than 64"),
        ("a/b", "letters, digits"),
        ("a+b", "letters, digits"),
        ("#", "letters, digits"),
        ("$SYS", "letters, digits"),
        ("nul\x00", "letters, digits"),
        ("tab\t", "letters, digits"),
        (".hidden", "not starting"),
        ("-dash", "not starting"),
        ("café", "letters, digits"),
        ("a b", "letters, digits"),
        ("\ufffe", "letters, digits"),
        ("x\ud800", "letters, digits"),
        ("line\n", "letters, digits"),
    ],
)
def test_invalid_names_are_refused_with_the_reason(name: str, reason: str) -> None:
    with pytest.raises(InvalidRoomError, match=reason) as refused:
        validate_room(name)
    assert refused.value.name == name
    assert not is_valid_room(name)


@given(valid_rooms)
def test_every_name_of_the_alphabet_is_valid(name: str) -> None:
    assert is_valid_room(name)


@given(st.text(max_size=80))
def test_a_name_is_valid_exactly_when_it_follows_the_rule(name: str) -> None:
    expected = (
        1 <= len(name) <= MAX_ROOM_LENGTH
        and all(c in ALPHABET for c in name)
        and name[0] not in ".-"
    )
    assert is_valid_room(name) == expected
    # A valid name can never carry an MQTT level separator, wildcard or system prefix.
    if is_valid_room(name):
        assert not set(name) & {"/", "+", "#", "$", "\x00"}
