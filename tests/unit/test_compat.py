"""protocols.compat: the version gate, the fallbacks, and the gateway's socket and server."""

import asyncio
import logging
from importlib import metadata
from typing import Any

import pytest
from daphne.cli import CommandLineInterface
from daphne.management.commands.runserver import Command as RunServer
from daphne.server import Server
from daphne.ws_protocol import WebSocketFactory
from twisted.internet.tcp import Connection

from gateway import metrics
from protocols import compat
from protocols.compat import (
    GatewayServer,
    GatewaySocket,
    Inbox,
    allowed_close_codes,
    check_versions,
    claim_socket,
    configure_websockets,
    fallback_close_code,
    unsupported_versions,
)
from protocols.outlets import SEND_BACKLOG_BYTES, AsgiOutlet, DaphneOutlet, Frame, outlet_for

WRITTEN_AGAINST = {"daphne": "4.2.3", "autobahn": "26.11.1", "twisted": "26.10.0"}


def pretend(monkeypatch: pytest.MonkeyPatch, **versions: str | None) -> None:
    """Installed versions as given (None: not installed); the others as written against."""
    real = metadata.version

    def version(name: str) -> str:
        if name in versions:
            found = versions[name]
            if found is None:
                raise metadata.PackageNotFoundError(name)
            return found
        return WRITTEN_AGAINST.get(name) or real(name)

    monkeypatch.setattr(metadata, "version", version)


def test_the_versions_installed_here_are_the_ones_it_was_written_for() -> None:
    assert unsupported_versions() == []


@pytest.mark.parametrize(
    ("name", "version", "supported"),
    [
        ("daphne", "4.2.3", True),
        ("daphne", "4.2.9", True),
        ("daphne", "4.2.2", False),
        ("daphne", "4.3.0", False),
        ("daphne", "5.0", False),
        ("autobahn", "26.11.0", True),
        ("autobahn", "26.11.7", True),
        ("autobahn", "26.12.1", False),
        ("autobahn", "25.11.1", False),
        ("twisted", "26.10.0", True),
        ("twisted", "26.10.0rc1", True),
        ("twisted", "26.10.2.post1", True),
        ("twisted", "26.11.0", False),
        ("twisted", "trunk", False),
    ],
)
def test_the_gate_admits_its_release_series_and_nothing_else(
    monkeypatch: pytest.MonkeyPatch, name: str, version: str, supported: bool
) -> None:
    pretend(monkeypatch, **{name: version})
    assert unsupported_versions() == ([] if supported else [(name, version)])


def test_a_library_that_is_not_installed_is_unsupported(monkeypatch: pytest.MonkeyPatch) -> None:
    pretend(monkeypatch, autobahn=None)
    assert unsupported_versions() == [("autobahn", "not installed")]


def test_supported_versions_pass_quietly(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    pretend(monkeypatch)
    before = metrics.snapshot()
    with caplog.at_level(logging.WARNING, logger="protocols.compat"):
        assert check_versions() is True
    assert caplog.records == []
    assert {k: v for k, v in metrics.snapshot().items() if k[0] == "compat_unpatched"} == {
        k: v for k, v in before.items() if k[0] == "compat_unpatched"
    }


def test_other_versions_are_logged_and_counted_per_library(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    pretend(monkeypatch, daphne="99.0", twisted="99.0")
    counts = {name: metrics.get("compat_unpatched", name) for name in WRITTEN_AGAINST}
    with caplog.at_level(logging.WARNING, logger="protocols.compat"):
        assert check_versions() is False
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2
    assert messages[0].startswith("daphne 99.0 is outside the versions")
    assert "(>=4.2.3, <4.3)" in messages[0]
    assert messages[1].startswith("twisted 99.0 is outside the versions")
    assert metrics.get("compat_unpatched", "daphne") == counts["daphne"] + 1
    assert metrics.get("compat_unpatched", "twisted") == counts["twisted"] + 1
    assert metrics.get("compat_unpatched", "autobahn") == counts["autobahn"]


def test_the_counter_is_described_with_a_library_label() -> None:
    metrics.inc("compat_unpatched", "daphne")
    text = metrics.exposition()
    assert "# HELP gateway_compat_unpatched_total " in text
    assert 'gateway_compat_unpatched_total{library="daphne"}' in text


def test_install_points_daphnes_commands_at_the_gateway_server(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(CommandLineInterface, "server_class", Server)
    monkeypatch.setattr(RunServer, "server_cls", Server)
    compat.install()
    assert CommandLineInterface.server_class is GatewayServer
    assert RunServer.server_cls is GatewayServer
    monkeypatch.setattr(CommandLineInterface, "server_class", object)  # someone else's choice
    compat.install()
    assert CommandLineInterface.server_class is object


@pytest.mark.parametrize(
    ("code", "sent"),
    [
        (1000, 1000),
        (1008, 4008),
        (1009, 4009),
        (1011, 4011),
        (1013, 4013),
        (3000, 3000),
        (4401, 4401),
        (4999, 4999),
        (999, 1000),
        (2000, 1000),
        (5000, 1000),
    ],
)
def test_close_codes_autobahn_refuses_fall_back_to_ones_it_allows(code: int, sent: int) -> None:
    assert fallback_close_code(code) == sent


async def test_the_fallback_application_moves_websocket_close_codes_only() -> None:
    sent: list[dict[str, Any]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": f"{scope['type']}.close", "code": 1008})
        await send({"type": "websocket.send", "text": "x"})
        await send({"type": "websocket.close"})

    async def record(message: dict[str, Any]) -> None:
        sent.append(message)

    wrapped = allowed_close_codes(app)
    await wrapped({"type": "websocket"}, None, record)
    await wrapped({"type": "http"}, None, record)
    assert sent == [
        {"type": "websocket.close", "code": 4008},
        {"type": "websocket.send", "text": "x"},
        {"type": "websocket.close"},
        {"type": "http.close", "code": 1008},
        {"type": "websocket.send", "text": "x"},
        {"type": "websocket.close"},
    ]


class _Factory:
    def prepareMessage(
        self, payload: bytes, isBinary: bool = False, doNotCompress: bool = False
    ) -> Any:
        from autobahn.websocket.protocol import PreparedMessage

        return PreparedMessage(payload, isBinary, False, doNotCompress)


class _Transport(Connection):
    """A plain TCP transport whose kernel takes ``room`` bytes per write."""

    def __init__(self, room: int) -> None:  # no socket, no reactor
        self.connected = 1
        self.room = room
        self.dataBuffer = b""
        self._tempDataLen = 0
        self.kernel: list[bytes] = []

    def writeSomeData(self, data: bytes) -> int:
        self.kernel.append(bytes(data[: self.room]))
        return min(self.room, len(data))


class _Socket(GatewaySocket):
    """A gateway socket with autobahn's own sending recorded instead of done."""

    def __init__(self, transport: _Transport) -> None:
        super().__init__()
        self.state = self.STATE_OPEN
        self._perMessageCompress = None  # as autobahn's handshake leaves it: none agreed
        self.factory = _Factory()
        self.transport = transport
        self.buffered: list[bytes] = []
        self.close_frames: list[int | None] = []

    def sendData(self, data: bytes, sync: bool = False, chopsize: int | None = None) -> None:
        self.buffered.append(data)
        self.transport._tempDataLen += len(data)

    def sendCloseFrame(
        self, code: int | None = None, reasonUtf8: bytes | None = None, isReply: bool = False
    ) -> None:
        self.close_frames.append(code)


def _wire(text: str) -> bytes:
    return _Factory().prepareMessage(text.encode()).payloadHybi  # type: ignore[no-any-return]


def test_a_frame_goes_straight_to_the_kernel_when_nothing_waits() -> None:
    socket = _Socket(_Transport(room=1 << 20))
    assert DaphneOutlet(socket).write(Frame("hello"))
    assert socket.transport.kernel == [_wire("hello")]
    assert socket.buffered == []


def test_a_tls_transport_is_never_written_around() -> None:
    tcp = _Transport(room=1 << 20)

    class Wrapper:  # as Twisted's TLS transport: what it lacks, the TCP transport under it has
        def __getattr__(self, name: str) -> Any:
            return getattr(tcp, name)

    socket = _Socket(tcp)
    socket.transport = Wrapper()
    assert DaphneOutlet(socket).write(Frame("secret"))
    assert tcp.kernel == []
    assert socket.buffered == [_wire("secret")]


def test_what_the_kernel_does_not_take_waits_and_later_frames_queue_behind_it() -> None:
    socket = _Socket(_Transport(room=3))
    outlet = DaphneOutlet(socket)
    assert outlet.write(Frame("hello"))
    assert outlet.write(Frame("again"))
    assert socket.transport.kernel == [_wire("hello")[:3]]
    assert socket.buffered == [_wire("hello")[3:], _wire("again")]


def test_a_socket_past_the_backlog_while_twisted_is_full_is_refused_until_it_drains() -> None:
    socket = _Socket(_Transport(room=0))
    outlet = DaphneOutlet(socket)
    frame = Frame("x" * 60_000)
    size = len(frame.prepared(socket.factory).payloadHybi)
    socket.pauseProducing()  # Twisted holds more than its bufferSize
    socket.pauseProducing()  # and says so on every write: the count goes on
    written = 0
    while written <= SEND_BACKLOG_BYTES:
        assert outlet.write(frame)
        written += size
    assert socket.written_while_full == written
    assert not outlet.write(frame)
    socket.resumeProducing()  # all of it sent
    assert socket.written_while_full is None
    assert outlet.write(frame)


def test_nothing_is_sent_on_a_socket_that_is_not_open() -> None:
    socket = _Socket(_Transport(room=1 << 20))
    socket.state = socket.STATE_CLOSING
    assert not DaphneOutlet(socket).write(Frame("late"))
    DaphneOutlet(socket).close(1013)
    assert socket.transport.kernel == []
    assert socket.close_frames == []


def test_protocol_close_codes_go_out_as_close_frames() -> None:
    socket = _Socket(_Transport(room=1 << 20))
    DaphneOutlet(socket).close(1013)
    socket.serverClose(1008)
    socket.serverClose(1009)
    assert socket.close_frames == [1013, 1008, 1009]
    socket.serverClose(4401)  # autobahn's own path for the codes it allows
    assert socket.close_frames[-1] == 4401


def test_what_the_server_sends_is_not_held_to_the_limit_on_what_it_receives() -> None:
    socket = _Socket(_Transport(room=1 << 20))
    socket.maxMessagePayloadSize = 10
    socket.sendMessage(b"x" * 100)
    assert socket.buffered == [_wire("x" * 100)]


def test_the_factory_holds_the_gateways_options_on_its_protocol_class() -> None:
    factory = WebSocketFactory(None, server="daphne")
    factory.setProtocolOptions(  # as daphne's Server.run does
        autoPingTimeout=30,
        allowNullOrigin=True,
        maxMessagePayloadSize=1 << 20,
        maxFramePayloadSize=1 << 20,
    )
    configure_websockets(factory)
    cls = factory.protocol
    assert issubclass(cls, GatewaySocket)
    limit = 64 * 1024  # GATEWAY_MAX_FRAME_BYTES by default
    assert (cls.maxMessagePayloadSize, cls.maxFramePayloadSize) == (limit, limit)
    assert cls.failByDrop is False
    assert cls.allowNullOrigin is True  # daphne's, kept
    assert cls.autoPingTimeout == 30
    assert cls.perMessageCompressionAccept(["an offer"]) is None
    assert all(hasattr(cls, name) for name in cls.CONFIG_ATTRS)


async def test_the_server_gives_each_application_an_inbox_and_its_task_the_socket() -> None:
    seen: list[Any] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append((claim_socket(), claim_socket(), await receive()))

    server = GatewayServer(application=app, endpoints=["tcp:0"])
    assert server.adjusted
    server.connections = {}
    socket = _Socket(_Transport(room=0))
    server.connections[socket] = {}
    inbox = server.create_application(socket, {"type": "websocket"})
    assert isinstance(inbox, Inbox)
    assert claim_socket() is None  # only the application's task has it
    inbox.put_nowait({"type": "websocket.connect"})
    await asyncio.wait_for(server.connections[socket]["application_instance"], 1)
    assert seen == [(socket, None, {"type": "websocket.connect"})]


async def test_outside_the_gateway_server_fan_out_goes_through_send() -> None:
    async def send(message: dict[str, Any]) -> None:
        pass

    assert isinstance(outlet_for(send), AsgiOutlet)


async def test_with_other_versions_the_server_leaves_daphne_as_it_ships(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pretend(monkeypatch, autobahn="27.1.0")
    sent: list[dict[str, Any]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert claim_socket() is None
        await send({"type": "websocket.close", "code": 1009})

    server = GatewayServer(application=app, endpoints=["tcp:0"], ready_callable=print)
    assert not server.adjusted
    assert server.ready_callable is print
    server.connections = {}
    protocol = object()
    server.connections[protocol] = {}

    async def handle_reply(_: Any, message: dict[str, Any]) -> None:
        sent.append(message)

    monkeypatch.setattr(server, "handle_reply", handle_reply)
    queue = server.create_application(protocol, {"type": "websocket"})
    assert isinstance(queue, asyncio.Queue)
    await asyncio.wait_for(server.connections[protocol]["application_instance"], 1)
    assert sent == [{"type": "websocket.close", "code": 4009}]
