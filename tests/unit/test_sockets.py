"""`ReadBuffer` on a real socket pair: paho's reads see the same bytes, with fewer recv calls."""

import socket
from collections.abc import Iterator

import pytest

from bridges.sockets import ReadBuffer


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    a.setblocking(False)
    yield a, b
    a.close()
    b.close()


def test_small_reads_are_served_from_one_recv(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, theirs = pair
    theirs.sendall(b"\x30\x05hello\x30\x02hi")
    buffered = ReadBuffer(ours)
    assert buffered.recv(1) == b"\x30"
    assert buffered.pending() == 10  # the rest came with the first recv
    assert [buffered.recv(1), buffered.recv(5)] == [b"\x05", b"hello"]
    assert [buffered.recv(1), buffered.recv(1), buffered.recv(10)] == [b"\x30", b"\x02", b"hi"]
    assert buffered.pending() == 0
    with pytest.raises(BlockingIOError):  # nothing more: paho sees what a socket would say
        buffered.recv(1)


def test_a_large_read_passes_through_and_eof_is_empty(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = pair
    body = bytes(range(256)) * 400  # 100 KiB: more than one chunk, less than the pair holds
    theirs.sendall(body)
    theirs.shutdown(socket.SHUT_WR)
    buffered = ReadBuffer(ours)
    received = b""
    while len(received) < len(body):
        received += buffered.recv(len(body) - len(received))
    assert received == body
    assert buffered.recv(1) == b""


def test_everything_else_is_the_socket(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, theirs = pair
    buffered = ReadBuffer(ours)
    assert buffered.fileno() == ours.fileno()
    buffered.send(b"ping")
    assert theirs.recv(4) == b"ping"
