"""daphne's WebSocket connections send a token's frame without building
autobahn's debug line (``paddler_project.websocket_frames``), and every other
case still goes autobahn's way.  A real daphne protocol object on a real
socket pair; ``tests/test_token_path.py`` holds the frames a client reads
through a running daphne to the other surfaces, byte for byte."""

from __future__ import annotations

import socket
from collections import deque
from collections.abc import Iterator
from typing import Any

import pytest
from autobahn import util as autobahn_util
from autobahn.websocket import protocol as autobahn_protocol
from autobahn.websocket.protocol import TrafficStats
from daphne.ws_protocol import WebSocketProtocol
from twisted.internet.error import ConnectionDone
from twisted.python import failure

from paddler_project import eager_writes, websocket_frames
from tests.support.processes import web_process_prints
from tests.support.redis_server import RedisServer
from tests.support.twisted_connections import server_connection

FRAME = b"\x81\x05token"


@pytest.fixture
def opened(
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[tuple[WebSocketProtocol, socket.socket, list[Any]]]:
    """An open daphne WebSocket connection writing to a socket pair, and the
    log lines autobahn built for it (its ``hltype`` calls)."""
    eager_writes.install()
    websocket_frames.install()
    built: list[Any] = []
    hltype = autobahn_util.hltype

    def counted(obj: Any) -> str:
        built.append(obj)
        return hltype(obj)  # type: ignore[no-untyped-call,no-any-return]

    monkeypatch.setattr(autobahn_protocol, "hltype", counted)
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    theirs.setblocking(False)
    server = server_connection(ours)
    connection = WebSocketProtocol()
    connection.transport = server
    connection.state = WebSocketProtocol.STATE_OPEN
    connection.send_queue = deque()
    connection.logOctets = False
    connection.trafficStats = TrafficStats()  # type: ignore[no-untyped-call]
    yield connection, theirs, built
    server.connectionLost(failure.Failure(ConnectionDone()))  # type: ignore[no-untyped-call]
    theirs.close()


def test_the_web_process_sends_frames_this_way(redis_server: RedisServer) -> None:
    """The application daphne loads installs it (checked in a process of its
    own: loading it here would change this test process for the others)."""
    check = (
        "import paddler_project.asgi; from paddler_project import websocket_frames; "
        "print(websocket_frames.installed())"
    )
    assert web_process_prints(check, redis_server.url) == "True"


def test_a_token_frame_goes_out_without_a_log_line(
    opened: tuple[WebSocketProtocol, socket.socket, list[Any]],
) -> None:
    connection, peer, built = opened
    connection.sendData(FRAME)
    assert peer.recv(100) == FRAME
    assert connection.trafficStats.outgoingOctetsWireLevel == len(FRAME)
    # autobahn's own sendData builds one per frame.
    assert built == []


def test_debug_logging_gets_autobahns_line(
    opened: tuple[WebSocketProtocol, socket.socket, list[Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    connection, peer, built = opened
    lines: list[dict[str, Any]] = []
    monkeypatch.setattr(
        connection.log, "debug", lambda text, **fields: lines.append(fields)
    )
    connection.sendData(FRAME)
    assert peer.recv(100) == FRAME
    assert len(built) == 1 and lines[0]["data_len"]


def test_a_frame_behind_autobahns_queue_waits_its_turn(
    opened: tuple[WebSocketProtocol, socket.socket, list[Any]],
) -> None:
    """While autobahn sends its queue (chopped or synchronous writes, one per
    turn of the reactor), a frame written meanwhile goes behind it, not
    ahead of it."""
    connection, peer, _ = opened
    connection.send_queue.append((FRAME, True))
    connection.triggered = True  # autobahn is working through its queue
    connection.sendData(b"after")
    assert [data for data, _ in connection.send_queue] == [FRAME, b"after"]
    with pytest.raises(BlockingIOError):
        peer.recv(100)
