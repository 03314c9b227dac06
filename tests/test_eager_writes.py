"""daphne's connections send what they are given at once
(``paddler_project.eager_writes``), and keep what the kernel does not take,
in order, for Twisted to send later."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from twisted.internet import tcp
from twisted.internet.error import ConnectionDone
from twisted.python import failure

from paddler_project import eager_writes
from paddler_project.connections import backlog_bytes
from tests.support.twisted_connections import server_connection


@pytest.fixture
def connection() -> Iterator[tuple[tcp.Server, socket.socket]]:
    eager_writes.install()
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    theirs.setblocking(False)
    server = server_connection(ours)
    yield server, theirs
    # Out of the reactor's watch lists before its socket closes.
    server.connectionLost(failure.Failure(ConnectionDone()))  # type: ignore[no-untyped-call]
    theirs.close()


def received(peer: socket.socket) -> bytes:
    data = b""
    while True:
        try:
            chunk = peer.recv(1 << 20)
        except BlockingIOError:
            return data
        if not chunk:
            return data
        data += chunk


def test_a_write_reaches_the_peer_without_a_turn_of_the_reactor(
    connection: tuple[tcp.Server, socket.socket],
) -> None:
    server, peer = connection
    server.write(b"token 1\n")  # type: ignore[no-untyped-call]
    server.writeSequence([b"3\r\n", b"abc", b"\r\n"])  # type: ignore[no-untyped-call]
    # The reactor never ran: Twisted alone would still hold all of it.
    assert received(peer) == b"token 1\n3\r\nabc\r\n"
    assert backlog_bytes(server) == 0
    assert not server._tempDataLen


def test_what_the_kernel_does_not_take_waits_in_order(
    connection: tuple[tcp.Server, socket.socket],
) -> None:
    server, peer = connection
    block = bytes(range(256)) * 256  # 64 KiB
    written = b""
    # The peer reads nothing: the kernel's buffers fill, and Twisted keeps
    # the rest.
    for number in range(64):
        piece = bytes([number]) + block
        server.write(piece)  # type: ignore[no-untyped-call]
        written += piece
    assert server._tempDataLen > 0
    later = b"after the backlog"
    server.write(later)  # type: ignore[no-untyped-call]
    written += later
    # Everything arrives, in order, as Twisted sends its part when it can.
    got = b""
    for _ in range(10_000):
        got += received(peer)
        if len(got) == len(written):
            break
        server.doWrite()  # type: ignore[no-untyped-call]
    assert got == written
