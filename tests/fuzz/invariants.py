"""What the parsers at the edges promise, whatever they are given.

The fuzz harnesses call these checks on every input, and the unit tests on theirs. A broken
promise raises (AssertionError, or the unexpected exception itself); a fuzzer reports that as a
crash, with the input.
"""

import base64
from collections.abc import Callable
from typing import Any

import msgpack

from bridges.codecs import Codec, Decoded
from gateway import metrics
from gateway.jsonutil import dumps, parse_json
from protocols.frames import CLOSE_TOO_BIG, Refusal, read_frame

# The gateway writes a message out in other call paths than the one that read it (fan-out,
# welcome frames, the channel layer), some of them deeper: it must survive those too.
SEND_STACK_FRAMES = 100
# Codecs that give a payload back byte for byte (the others give back the same value).
BYTE_EXACT_CODECS = {"binary", "text"}
# Codecs for which base64 is the decoding itself, not a failure to decode.
OPAQUE_CODECS = {"binary"}
MUST_BE_JSON = "frames must be JSON: "


def _deeper(frames: int, action: Callable[[], None]) -> None:
    if frames:
        _deeper(frames - 1, action)
    else:
        action()


def check_sendable(message: Any) -> None:
    """``message`` goes wherever a room's messages go, and arrives the same.

    Browsers get it as UTF-8 JSON text, three levels down in a welcome frame; other processes
    get it through the channel layer, as MessagePack.
    """
    welcome = {"type": "welcome", "messages": [{"type": "message", "message": message}]}
    event = {"type": "room.messages", "envelopes": [{"message": message}]}

    def send() -> None:
        text = dumps(welcome)
        assert parse_json(text.encode("utf-8")) == welcome
        assert msgpack.unpackb(msgpack.packb(event, use_bin_type=True), raw=False) == event

    _deeper(SEND_STACK_FRAMES, send)


def check_error_frame(refusal: Refusal) -> None:
    """The error frame that answers a refused frame can be sent."""
    assert refusal.code
    assert refusal.detail
    dumps({"type": "error", "code": refusal.code, "detail": refusal.detail}).encode("utf-8")


def check_parse_json(data: str | bytes) -> Any:
    """`parse_json` refuses with ValueError only, and what it accepts can be sent on.

    Returns the value, or None when the data is refused.
    """
    try:
        value = parse_json(data)
    except ValueError:
        return None
    check_sendable(value)
    assert parse_json(dumps(value)) == value
    return value


def check_frame(text: str | None, limit: int) -> dict[str, Any] | Refusal:
    """`read_frame` never raises, closes only over the limit and agrees with `parse_json`."""
    frame = read_frame(text, limit)
    if isinstance(frame, Refusal):
        check_error_frame(frame)
    if text is None:
        assert isinstance(frame, Refusal)
        assert (frame.code, frame.close) == ("binary_frame", None)
        return frame
    if len(text.encode("utf-8", "surrogatepass")) > limit:
        assert isinstance(frame, Refusal)
        assert (frame.code, frame.close) == ("frame_too_big", CLOSE_TOO_BIG)
        return frame
    assert not isinstance(frame, Refusal) or frame.close is None, "only a big frame closes"
    try:
        value = parse_json(text)
    except ValueError:
        assert isinstance(frame, Refusal)
        assert frame.code == "invalid_json"
        assert frame.detail.startswith(MUST_BE_JSON)
        assert len(frame.detail) > len(MUST_BE_JSON), "the detail says what is wrong"
        return frame
    if isinstance(value, dict) and "message" in value:
        # The whole frame, any other key ("type" too) included: only "message" is used.
        assert frame == value
        check_sendable(value["message"])
    else:
        assert isinstance(frame, Refusal)
        assert (frame.code, frame.close) == ("invalid_frame", None)
    return frame


def check_decode(codec: Codec, payload: bytes) -> Decoded:
    """A codec's decode never raises; what it cannot decode arrives as base64 and is counted.

    The built-in codecs vouch that what they decode can be sent on (the room's path then skips
    that check): it can.
    """
    before = metrics.get("payload_decode_failures", codec.name)
    decoded = codec.decode(payload)
    failures = metrics.get("payload_decode_failures", codec.name) - before
    assert isinstance(decoded, Decoded)
    assert decoded.sendable
    if decoded.base64:
        assert base64.b64decode(decoded.message, validate=True) == payload
        check_sendable(decoded.message)
        assert failures == (0 if codec.name in OPAQUE_CODECS else 1)
    else:
        assert failures == 0
        check_sendable(decoded.message)
    return decoded


def check_round_trip(codec: Codec, decoded: Decoded, payload: bytes) -> None:
    """A decoded value encodes to a payload that decodes to the same value.

    Base64 stands for the payload's bytes in the binary codec only; the others would publish
    base64 text as text.
    """
    if decoded.base64 and codec.name not in OPAQUE_CODECS:
        return
    encoded = codec.encode(decoded.message)
    if codec.name in BYTE_EXACT_CODECS:
        assert encoded == payload
    assert codec.decode(encoded) == decoded
