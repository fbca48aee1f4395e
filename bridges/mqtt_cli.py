"""A small MQTT client for the shell, needing nothing but the gateway's virtualenv.

Publish one message, or print the messages on some topics::

    python -m bridges.mqtt_cli pub -t rooms/kitchen/sensor-1 -m '{"t": 21.5}'
    python -m bridges.mqtt_cli sub -t 'rooms/kitchen/#' -v

The options are those of Mosquitto's ``mosquitto_pub`` and ``mosquitto_sub`` (Debian's
``mosquitto-clients``), so an example works with either:

- both: ``-h HOST`` (127.0.0.1), ``-p PORT`` (1883), ``-u USER``, ``-P PASSWORD``, ``-i CLIENT_ID``
  (random), ``-k KEEPALIVE`` (60 s), ``-q QOS`` (0), ``-V 311|5`` (MQTT 3.1.1 or 5; 3.1.1);
- ``pub``: ``-t TOPIC`` and ``-m MESSAGE`` (or ``-n``, an empty message), ``-r`` to retain it;
- ``sub``: ``-t FILTER`` (repeatable), ``-v`` to print each message's topic before it, ``-C N``
  to stop after N messages, ``-W SECONDS`` to stop after that long.

``sub`` says on standard error when it has subscribed; the messages go to standard output, one
a line. Exit status: 0 done; 1 the broker could not be reached, refused the connection or the
subscription, did not acknowledge a publication, or ``-W`` ran out before ``-C`` messages came;
2 the arguments are wrong.
"""

import argparse
import os
import secrets
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from paho.mqtt.client import (
    Client,
    ConnectFlags,
    DisconnectFlags,
    MQTTMessage,
    MQTTMessageInfo,
)
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gateway.mqtt_acl import is_valid_topic

USAGE_ERROR = 2
FAILURE = 1
CONNECT_TIMEOUT = 10.0  # seconds to wait for the broker's CONNACK
ACK_TIMEOUT = 10.0  # seconds to wait for a SUBACK, or a publication to be acknowledged
_VERSIONS = {
    "311": MQTTProtocolVersion.MQTTv311,
    "mqttv311": MQTTProtocolVersion.MQTTv311,
    "5": MQTTProtocolVersion.MQTTv5,
    "mqttv5": MQTTProtocolVersion.MQTTv5,
}


class Failure(Exception):
    """Something went wrong with the broker: exit status 1, with this message."""


def _bounded_int(name: str, low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{name} must be a whole number, not {text!r}"
            ) from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{name} must be {low}-{high}, not {value}")
        return value

    return parse


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a timeout must be seconds, not {text!r}") from None
    if not 0 < value <= 86400:
        raise argparse.ArgumentTypeError(f"a timeout must be 0-86400 seconds, not {value:g}")
    return value


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--help", action="help", help="show this help and exit")
    parser.add_argument("-h", "--host", default="127.0.0.1", help="the broker (127.0.0.1)")
    parser.add_argument(
        "-p",
        "--port",
        type=_bounded_int("the port", 1, 65535),
        default=1883,
        help="the broker's port (1883)",
    )
    parser.add_argument("-u", "--username", help="the user name (a device's name)")
    parser.add_argument(
        "-P", "--pw", dest="password", metavar="PASSWORD", help="the password (a device's secret)"
    )
    parser.add_argument("-i", "--id", dest="client_id", help="the client id (random)")
    parser.add_argument(
        "-k",
        "--keepalive",
        type=_bounded_int("the keepalive", 5, 65535),
        default=60,
        help="seconds between pings (60)",
    )
    parser.add_argument("-q", "--qos", type=int, choices=(0, 1, 2), default=0, help="the QoS (0)")
    parser.add_argument(
        "-V",
        "--protocol-version",
        choices=sorted(_VERSIONS),
        metavar="{311,5}",
        default="311",
        help="MQTT 3.1.1 (311, the default) or 5",
    )


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The command line, and its commands ``pub`` and ``sub`` (``mosquitto_pub``'s and
    ``mosquitto_sub``'s options)."""
    parser = argparse.ArgumentParser(
        prog="python -m bridges.mqtt_cli",
        description="Publish to or subscribe from an MQTT broker.",
        add_help=False,
    )
    parser.add_argument("--help", action="help", help="show this help and exit")
    commands = parser.add_subparsers(dest="command", required=True, metavar="{pub,sub}")
    pub = commands.add_parser(
        "pub", help="publish one message", add_help=False, description="Publish one message."
    )
    _common(pub)
    pub.add_argument("-t", "--topic", required=True, help="the topic (no wildcards)")
    payload = pub.add_mutually_exclusive_group(required=True)
    payload.add_argument("-m", "--message", help="the message, as text")
    payload.add_argument(
        "-n", "--null-message", action="store_true", help="an empty message (clears a retained one)"
    )
    pub.add_argument("-r", "--retain", action="store_true", help="retain the message")
    sub = commands.add_parser(
        "sub",
        help="print the messages on some topics",
        add_help=False,
        description="Print the messages on some topics, one a line.",
    )
    _common(sub)
    sub.add_argument(
        "-t",
        "--topic",
        dest="filters",
        metavar="FILTER",
        action="append",
        required=True,
        help="a topic filter (+ and # allowed); repeat for more",
    )
    sub.add_argument("-v", "--verbose", action="store_true", help="print each message's topic")
    sub.add_argument(
        "-C",
        "--count",
        type=_bounded_int("the count", 1, 1_000_000),
        help="stop after COUNT messages",
    )
    sub.add_argument("-W", "--timeout", type=_seconds, help="stop after this many seconds")
    return parser, {"pub": pub, "sub": sub}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The arguments, checked: a wrong one exits with status 2 and says what is wrong."""
    parser, commands = build_parser()
    options = parser.parse_args(argv)
    chosen = commands[options.command]

    def wrong(message: str) -> NoReturn:
        chosen.error(message)

    topics: list[str] = [options.topic] if options.command == "pub" else options.filters
    texts = [("host (-h)", options.host), ("client id (-i)", options.client_id)]
    texts += [("user name (-u)", options.username), ("password (-P)", options.password)]
    for what, text in texts + [("topic (-t)", topic) for topic in topics]:
        try:
            (text or "").encode()
        except UnicodeEncodeError:
            wrong(f"the {what} {text!r} is not valid UTF-8")
    if not options.host.strip():
        wrong("the host (-h) is empty")
    for topic in topics:
        if options.command == "pub" and not is_valid_topic(topic, wildcards=False):
            wrong(
                f"{topic!r} is not a topic to publish to: it must be non-empty, without NUL, "
                "'+' or '#'"
            )
        if options.command == "sub" and not is_valid_topic(topic, wildcards=True):
            wrong(
                f"{topic!r} is not a topic filter: '+' must be a whole level, '#' the whole "
                "last level"
            )
    v311 = _VERSIONS[options.protocol_version] == MQTTProtocolVersion.MQTTv311
    if options.password is not None and options.username is None and v311:
        wrong("a password (-P) needs a user name (-u) in MQTT 3.1.1")
    if options.client_id is not None and not 1 <= len(options.client_id.encode()) <= 65535:
        wrong("the client id (-i) must be 1-65535 bytes")
    return options


class Connection:
    """One MQTT connection, driven from this thread (no background thread)."""

    def __init__(self, options: argparse.Namespace) -> None:
        self.where = f"{options.host}:{options.port}"
        self.options = options
        self.client = Client(
            CallbackAPIVersion.VERSION2,
            client_id=options.client_id or f"mqtt-cli-{secrets.token_hex(4)}",
            protocol=_VERSIONS[options.protocol_version],
            reconnect_on_failure=False,
        )
        if options.username is not None:
            self.client.username_pw_set(options.username, options.password)
        self.connack: ReasonCode | None = None
        self.closed: ReasonCode | None = None
        self.leaving = False
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect

    def _on_connect(
        self,
        client: Client,
        userdata: Any,
        flags: ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self.connack = reason

    def _on_disconnect(
        self,
        client: Client,
        userdata: Any,
        flags: DisconnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self.closed = reason

    def wait(self, done: Callable[[], bool], seconds: float | None, what: str) -> bool:
        """Serve the connection until ``done()``; False if ``seconds`` pass first."""
        deadline = None if seconds is None else time.monotonic() + seconds
        while not done():
            if self.closed is not None and not self.leaving:
                raise Failure(f"the broker at {self.where} closed the connection {what}")
            if deadline is not None and time.monotonic() >= deadline:
                return False
            code = self.client.loop(timeout=0.1)
            if done():
                break
            if code not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_AGAIN):
                if self.leaving:
                    break
                raise Failure(f"lost the connection to {self.where} {what}: {code.name}")
        return done()

    def open(self) -> None:
        """Connect and wait for the broker to accept."""
        try:
            self.client.connect(self.options.host, self.options.port, self.options.keepalive)
        except OSError as exc:
            raise Failure(f"cannot connect to {self.where}: {exc.strerror or exc}") from exc
        if not self.wait(lambda: self.connack is not None, CONNECT_TIMEOUT, "before it answered"):
            raise Failure(f"the broker at {self.where} did not answer within {CONNECT_TIMEOUT:g} s")
        assert self.connack is not None
        if self.connack.is_failure:
            raise Failure(f"the broker at {self.where} refused the connection: {self.connack}")

    def close(self) -> None:
        """Disconnect cleanly, if still connected."""
        if self.client.is_connected():
            self.leaving = True
            self.client.disconnect()
            self.wait(lambda: self.closed is not None, 2.0, "while leaving")


def publish(options: argparse.Namespace) -> None:
    """``pub``: publish one message and wait until the broker has it (QoS 1, 2: acknowledged)."""
    connection = Connection(options)
    refused: list[ReasonCode] = []

    def on_publish(
        client: Client, userdata: Any, mid: int, reason: ReasonCode, properties: Properties
    ) -> None:
        if reason.is_failure:
            refused.append(reason)

    connection.client.on_publish = on_publish
    connection.open()
    try:
        payload = None if options.null_message else os.fsencode(options.message)
        info: MQTTMessageInfo = connection.client.publish(
            options.topic, payload, qos=options.qos, retain=options.retain
        )
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise Failure(f"could not publish to {options.topic!r}: {info.rc.name}")
        if not connection.wait(info.is_published, ACK_TIMEOUT, "before the message was sent"):
            raise Failure(
                f"the broker at {connection.where} did not acknowledge the message within "
                f"{ACK_TIMEOUT:g} s"
            )
        if refused:
            raise Failure(f"the broker refused the message on {options.topic!r}: {refused[0]}")
    finally:
        connection.close()


def subscribe(options: argparse.Namespace) -> None:
    """``sub``: print the messages on the filters, up to ``-C`` of them, for up to ``-W`` s."""
    connection = Connection(options)
    granted: list[ReasonCode] = []
    received = 0
    out = sys.stdout.buffer

    def on_subscribe(
        client: Client,
        userdata: Any,
        mid: int,
        reasons: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        granted.extend(reasons)

    def on_message(client: Client, userdata: Any, message: MQTTMessage) -> None:
        nonlocal received
        if options.count is not None and received >= options.count:
            return
        received += 1
        prefix = message.topic.encode() + b" " if options.verbose else b""
        out.write(prefix + message.payload + b"\n")
        out.flush()

    connection.client.on_subscribe = on_subscribe
    connection.client.on_message = on_message
    started = time.monotonic()
    connection.open()
    try:
        code, _ = connection.client.subscribe([(f, options.qos) for f in options.filters])
        if code != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise Failure(f"could not subscribe: {code.name}")
        if not connection.wait(lambda: bool(granted), ACK_TIMEOUT, "before it answered"):
            raise Failure(
                f"the broker at {connection.where} did not answer the subscription within "
                f"{ACK_TIMEOUT:g} s"
            )
        for topic_filter, reason in zip(options.filters, granted, strict=False):
            if reason.is_failure:
                raise Failure(f"the broker refused the subscription to {topic_filter!r}")
        sys.stderr.write(f"subscribed to {', '.join(options.filters)} on {connection.where}\n")
        sys.stderr.flush()
        left = None
        if options.timeout is not None:
            left = max(0.0, options.timeout - (time.monotonic() - started))

        def finished() -> bool:
            return options.count is not None and received >= options.count

        enough = connection.wait(finished, left, "while waiting for messages")
        if not enough and options.count is not None:
            raise Failure(
                f"timed out after {options.timeout:g} s with {received} of {options.count} messages"
            )
    finally:
        connection.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; the exit status."""
    options = parse_args(argv)
    try:
        (publish if options.command == "pub" else subscribe)(options)
    except Failure as exc:
        sys.stderr.write(f"error: {exc}\n")
        return FAILURE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # the reader went away (`... | head -n 1`): nothing more to do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


if __name__ == "__main__":
    sys.exit(main())
