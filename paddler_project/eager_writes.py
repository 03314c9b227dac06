"""daphne's connections send what they are given at once, when they can.

Twisted's TCP transport never sends on ``write``: it keeps the bytes, asks the
event loop to watch the socket for writing, sends on the loop's next turn and
stops watching.  For a token stream that is, per token, a turn of the loop,
two changes to the loop's watch list (``epoll_ctl``) and Twisted's logging
and context wrappers around the send: about a quarter of the web process's
CPU per token at one stream (py-spy).

``install`` makes the server side of Twisted's TCP connections send at once
when nothing of theirs is waiting to go out: the kernel takes the bytes (a
socket's send buffer has room for many tokens), and whatever it does not take
is kept and sent as before, after what was sent, so nothing changes order.
Writes behind a backlog, on a connection closing or under TLS go Twisted's
way; so does a send that fails, whose error Twisted then finds and reports as
it always did.  ``paddler_project.connections`` measures the backlog the
same way whichever path the bytes took.

This reads Twisted's internals (``FileDescriptor``'s buffer, ``TLS``,
``_writeDisconnected``); ``tests/test_eager_writes.py`` fails if they change.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from twisted.internet import tcp

_installed = False


def _send_now(connection: Any, data: bytes) -> bytes:
    """Send what the kernel takes of ``data`` now; return the rest."""
    if (
        connection.TLS
        or not connection.connected
        or connection.disconnecting
        or connection._writeDisconnected
        or connection._tempDataLen
        or len(connection.dataBuffer) > connection.offset
    ):
        return data
    try:
        sent = connection.socket.send(data)
    except OSError:
        # Full (EAGAIN), interrupted, or broken: Twisted's way sends it
        # later, or finds the error and ends the connection.
        return data
    return data[sent:]


def install() -> None:
    """Make Twisted's server connections send at once (once per process)."""
    global _installed
    if _installed:
        return
    _installed = True
    write = tcp.Server.write
    write_sequence = tcp.Server.writeSequence

    def eager_write(self: Any, data: bytes) -> None:
        if type(data) is bytes and data:
            data = _send_now(self, data)
            if not data:
                return
        write(self, data)  # type: ignore[no-untyped-call]

    def eager_write_sequence(self: Any, iovec: Iterable[bytes]) -> None:
        parts = list(iovec)
        if parts and all(type(part) is bytes for part in parts):
            rest = _send_now(self, b"".join(parts))
            if not rest:
                return
            parts = [rest]
        write_sequence(self, parts)  # type: ignore[no-untyped-call]

    tcp.Server.write = eager_write  # type: ignore[method-assign]
    tcp.Server.writeSequence = eager_write_sequence  # type: ignore[method-assign]
