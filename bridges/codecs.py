"""Payload codecs, registered by name: bytes from the broker <-> values in a room.

A payload that a codec cannot decode is never dropped: it reaches the room as base64 and the
``payload_decode_failures`` counter moves.
"""

import base64
import binascii
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgpack

from gateway import metrics
from gateway.jsonutil import MESSAGE_MAX_DEPTH, check_sendable, dumps, parse_json


@dataclass(slots=True)  # not frozen: a frozen one takes 3x as long to make
class Decoded:
    """A decoded payload: the value, and whether it is base64 text of raw bytes.

    ``sendable``: the codec has made sure the value passes `check_sendable`, so the way into
    the room need not check it again. A codec that cannot say so leaves it False.
    """

    message: Any
    base64: bool = False
    sendable: bool = field(default=False, compare=False)


class Codec(Protocol):
    """Turns payload bytes into a JSON-compatible value and back."""

    name: str
    content_type: str

    def decode(self, payload: bytes) -> Decoded: ...

    def encode(self, message: Any) -> bytes: ...


def as_base64(payload: bytes) -> Decoded:
    """Raw bytes, carried as base64 text."""
    return Decoded(base64.b64encode(payload).decode("ascii"), base64=True, sendable=True)


def _failed(codec: str, payload: bytes) -> Decoded:
    metrics.inc("payload_decode_failures", codec)
    return as_base64(payload)


def _text(codec: str, text: str, payload: bytes) -> Decoded:
    """Text as a string (decoded from UTF-8: no lone surrogate); text holding U+0000, which
    no database keeps in JSON, as the bytes it is, in base64 (counted like undecodable bytes)."""
    if "\x00" in text:
        return _failed(codec, payload)
    return Decoded(text, sendable=True)


class JsonCodec:
    """JSON text; text that is not JSON is kept as a string, bytes that are not UTF-8 as base64."""

    name = "json"
    content_type = "application/json"

    def decode(self, payload: bytes) -> Decoded:
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError:
            return _failed(self.name, payload)
        try:
            return Decoded(parse_json(text, MESSAGE_MAX_DEPTH), sendable=True)
        except ValueError:
            return _text(self.name, text, payload)

    def encode(self, message: Any) -> bytes:
        return dumps(message).encode("utf-8")


class TextCodec:
    """UTF-8 text, never parsed."""

    name = "text"
    content_type = "text/plain; charset=utf-8"

    def decode(self, payload: bytes) -> Decoded:
        try:
            return _text(self.name, payload.decode("utf-8"), payload)
        except UnicodeDecodeError:
            return _failed(self.name, payload)

    def encode(self, message: Any) -> bytes:
        return (message if isinstance(message, str) else dumps(message)).encode("utf-8")


class BinaryCodec:
    """Opaque bytes, carried to browsers as base64."""

    name = "binary"
    content_type = "application/octet-stream"

    def decode(self, payload: bytes) -> Decoded:
        return as_base64(payload)

    def encode(self, message: Any) -> bytes:
        if isinstance(message, str):
            try:
                return base64.b64decode(message, validate=True)
            except binascii.Error:
                return message.encode("utf-8")
        return dumps(message).encode("utf-8")


class MsgpackCodec:
    """MessagePack, decoded to the JSON-compatible subset (maps with string keys)."""

    name = "msgpack"
    content_type = "application/msgpack"

    def decode(self, payload: bytes) -> Decoded:
        try:
            value = msgpack.unpackb(payload, raw=False, strict_map_key=True)
            check_sendable(value)  # deep nesting, lone surrogates; and JSON-compatible
        except (ValueError, TypeError, msgpack.UnpackException):
            return _failed(self.name, payload)
        return Decoded(value, sendable=True)

    def encode(self, message: Any) -> bytes:
        return bytes(msgpack.packb(message, use_bin_type=True))


_registry: dict[str, Codec] = {}


def register(codec: Codec) -> None:
    """Make ``codec`` available by its name."""
    _registry[codec.name] = codec


def codec_for_content_type(content_type: str | None) -> Codec | None:
    """The codec for an MQTT 5 content type (``application/json; charset=utf-8`` too), if any."""
    if not content_type:
        return None
    wanted = content_type.split(";", 1)[0].strip().lower()
    if wanted.startswith("text/"):
        return _registry.get("text")
    wanted = _ALIASES.get(wanted, wanted)
    return next((c for c in _registry.values() if c.content_type == wanted), None)


_ALIASES = {
    "application/x-msgpack": "application/msgpack",
    "application/vnd.msgpack": "application/msgpack",
}


def get_codec(name: str) -> Codec:
    """The codec registered as ``name``; KeyError names the known ones."""
    try:
        return _registry[name]
    except KeyError:
        raise KeyError(f"unknown codec {name!r}; known: {sorted(_registry)}") from None


for _codec in (JsonCodec(), TextCodec(), BinaryCodec(), MsgpackCodec()):
    register(_codec)
