"""A Twisted TCP server connection over a socket pair, without a server:
what daphne writes a response to, for tests of what happens there."""

from __future__ import annotations

import socket

from twisted.internet import protocol, reactor, tcp


def server_connection(ours: socket.socket) -> tcp.Server:
    """The server side of a connection whose socket is ``ours``."""
    return tcp.Server(
        ours,
        protocol.Protocol(),  # type: ignore[arg-type]
        ("127.0.0.1", 1),
        None,  # type: ignore[arg-type]
        1,
        reactor,
    )
