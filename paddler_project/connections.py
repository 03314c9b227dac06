"""What daphne does not do for its connections, done from the ASGI side.

``GuardedConnections`` wraps the ASGI application (``asgi.py``) and does
three things for each connection daphne serves.

**A bound on the output a client has not taken.**  daphne has no
backpressure.  Every ASGI message it is handed goes straight into the
connection's Twisted transport, and ``await send(...)`` returns at once whether
or not the client reads: a client that stops reading its socket (or reads
slower than tokens come) makes the web process buffer its stream without end,
while an agent's slot keeps generating for nobody.  The dispatcher cannot see
it: it reads the stream as fast as ever; only the socket does not drain.

So before a message of a streamed response (NDJSON, SSE) or of a WebSocket
goes out, once an eighth of the limit has gone out since it last did, the
wrapper measures the connection's backlog: what Twisted still holds unsent,
plus what the kernel's send queue holds that the client has not acknowledged
(Linux's ``SIOCOUTQ``; measuring before every message was a system call per
token).  Above ``PADDLER_MAX_CLIENT_BUFFER_BYTES`` it aborts the connection
(a TCP reset: a client that is not reading could not read an error line
queued behind that backlog anyway).  daphne then tells the
application, with ``http.disconnect`` or ``websocket.disconnect``, as for any
client that hangs up: its requests are cancelled on their agents, their slots
are freed, and the request log says ``cancelled``.

- The kernel's queue counts because Linux grows it by itself (``tcp_wmem``, up
  to 4 MiB by default): a stalled reader of a slow stream could hold megabytes
  there before Twisted kept a byte.  Counted, the limit bounds all the memory
  a client holds on this host.  (The client's own receive buffer, on its
  host, counts as taken.)
- "Before a message": Twisted sends nothing while the application writes; it
  flushes on the next turn of the event loop, so right after a write the
  whole message is unsent, however fast the client.  What is still unsent
  when the *next* message comes (the loop turned in between: a stream waits
  for its tokens) is what the client did not take.
- Only streams: a response with a ``Content-Length`` (every non-streaming
  Django response) is finite and already in memory whole; Django hands it
  over in 64 KiB chunks with no turn of the loop between them.  It is never
  cut.

**WebSocket failures close with a code and a reason.**  When a client breaks
the WebSocket protocol (a text message that is not UTF-8, a message above
daphne's ``--websocket-max-message-size``, a reserved opcode), autobahn as
daphne sets it up drops the TCP connection without a word.  The wrapper turns
autobahn's ``failByDrop`` off for our sockets, so the client gets a close
frame with RFC 6455's code (1007, 1009, 1002) and autobahn's reason, as
browsers report them in ``CloseEvent``.

**A response that fails midway ends in an error, not a hang.**  When the
application raises after its response started (a token stream whose Redis
went away), daphne tries to start a 500 response on it.  That raises inside
daphne's periodic application checker, which then never runs again for the
life of the process (no more clean-up of finished connections, no more
``--application-close-timeout``), and the client waits for ever.  The
wrapper logs the exception and resets the connection instead: the client's
HTTP library reports a response cut short.

None of this is in daphne's or Twisted's public API (Twisted's producer API only
says "more than 64 KiB buffered"), so this reads their internals: daphne 4
hands the application ``functools.partial(Server.handle_reply, protocol)`` as
``send``; the protocol's ``transport`` is Twisted's TCP transport (under TLS,
wrapped); a ``twisted.internet.abstract.FileDescriptor`` keeps its unsent
bytes in ``dataBuffer`` (from ``offset``) and ``_tempDataBuffer``
(``_tempDataLen`` bytes); a WebSocket protocol is autobahn's, whose options
are attributes of the protocol.  Under another server, or if those names
change, the wrapper passes messages through untouched and says so once in the
log; ``tests/test_connections.py`` and ``tests/test_inference_socket.py`` fail
then.
"""

from __future__ import annotations

import functools
import logging
import socket
import struct
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# How many transports deep to look for Twisted's TCP transport (TLS wraps it).
_MAX_WRAPPING = 4
_warned_unknown_server = False


def daphne_protocol(send: Send) -> Any | None:
    """The daphne protocol object that ``send`` replies through; else None."""
    if not isinstance(send, functools.partial) or not send.args:
        return None
    owner = getattr(send.func, "__self__", None)
    if type(owner).__module__ != "daphne.server":
        return None
    return send.args[0]


def tcp_transport(protocol: Any) -> Any | None:
    """The Twisted TCP transport under ``protocol``, if it is one we can read."""
    transport = getattr(protocol, "transport", None)
    for _ in range(_MAX_WRAPPING):
        if transport is None or _twisted_unsent(transport) is not None:
            return transport
        # A wrapping protocol (TLS) writes through to the transport under it.
        transport = getattr(transport, "transport", None)
    return None


def _twisted_unsent(transport: Any) -> int | None:
    data = getattr(transport, "dataBuffer", None)
    offset = getattr(transport, "offset", None)
    pending = getattr(transport, "_tempDataLen", None)
    if not isinstance(data, bytes | memoryview):
        return None
    if not isinstance(offset, int) or not isinstance(pending, int):
        return None
    return len(data) - offset + pending


if sys.platform == "linux":
    import fcntl
    import termios

    def _unacked(sock: socket.socket) -> int:
        # SIOCOUTQ (the same number as TIOCOUTQ): bytes in the socket's send
        # queue that the peer has not acknowledged.
        raw = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
        return int(struct.unpack("i", raw)[0])

else:

    def _unacked(sock: socket.socket) -> int:
        return 0  # elsewhere Twisted's buffer alone is bounded


def _kernel_unacked(transport: Any) -> int:
    handle = getattr(transport, "getHandle", None)
    try:
        sock = handle() if handle is not None else None
    except AttributeError:
        # Twisted drops a connection's socket once the connection is lost:
        # the client hung up, and nothing it has not taken counts any more.
        return 0
    if not isinstance(sock, socket.socket):
        return 0
    try:
        return _unacked(sock)
    except OSError:
        return 0  # the socket is closing


def backlog_bytes(transport: Any) -> int:
    """Bytes written to a TCP ``transport`` that its client has not taken yet."""
    return (_twisted_unsent(transport) or 0) + _kernel_unacked(transport)


class GuardedConnections:
    """ASGI wrapper: bounded unread output, WebSocket failures that say why,
    and no hang when a response fails midway.

    ``max_unread_bytes``: a client whose backlog passes it is cut off.
    """

    def __init__(self, app: ASGIApp, *, max_unread_bytes: int) -> None:
        self.app = app
        self.max_unread_bytes = max_unread_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        protocol = daphne_protocol(send)
        transport = tcp_transport(protocol)
        if protocol is None or transport is None:
            _warn_unguarded(send)
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket" and hasattr(protocol, "failByDrop"):
            # Read by autobahn when it fails the connection; set before the
            # handshake completes, so before any frame is read.
            protocol.failByDrop = False
        bounded = _BoundedSend(send, transport, self.max_unread_bytes, scope)
        try:
            await self.app(scope, receive, bounded)
        except Exception:
            if not bounded.mid_response:
                raise  # daphne answers 500, or closes the socket with 1011
            # daphne would try to start a 500 response on a response already
            # started: that raises inside its periodic application checker,
            # which then never runs again (no more clean-up or timeouts for
            # any connection), and this client would wait for ever.
            logger.exception(
                "%s failed in the middle of its response; cutting the client off",
                scope.get("path", "?"),
            )
            bounded.abort()


class _BoundedSend:
    """The ``send`` of one connection, checking its backlog as it writes."""

    def __init__(self, send: Send, transport: Any, limit: int, scope: Scope) -> None:
        self.send = send
        self.transport = transport
        self.limit = limit
        self.scope = scope
        # A response of known length is never cut (see the module docstring).
        self.bounded = scope["type"] == "websocket"
        self.aborted = False
        # An HTTP response started and not yet ended.
        self.mid_response = False
        # Bytes handed to daphne since the backlog was last measured.  The
        # kernel's queue is asked (a system call) once they reach an eighth
        # of the limit, not before each message (each token, at one stream):
        # a client is cut off at most that much past the limit.
        self.unmeasured = 0
        self.measure_every = max(1, limit // 8)

    async def __call__(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            self.mid_response = True
            self.bounded = not any(
                name.lower() == b"content-length"
                for name, _ in message.get("headers", ())
            )
        elif kind == "http.response.body" and not message.get("more_body", False):
            self.mid_response = False
        if self.bounded and kind in ("http.response.body", "websocket.send"):
            if self.aborted:
                return  # daphne reports the disconnect on the next turn
            self.unmeasured += _size(message)
            if self.unmeasured < self.measure_every:
                await self.send(message)
                return
            self.unmeasured = 0
            backlog = backlog_bytes(self.transport)
            if backlog > self.limit:
                client = self.scope.get("client")
                logger.warning(
                    "client %s of %s left %d bytes unread (limit %d); cutting it off",
                    f"{client[0]}:{client[1]}" if client else "?",
                    self.scope.get("path", "?"),
                    backlog,
                    self.limit,
                )
                self.abort()
                return
        await self.send(message)

    def abort(self) -> None:
        """Reset the connection: the client sees an error, never a hang.

        Drops Twisted's buffer and resets the connection now; daphne's
        connectionLost follows on the next turn of the loop, and with it the
        disconnect message to the application.
        """
        self.aborted = True
        self.transport.abortConnection()


def _size(message: Message) -> int:
    """The size of an ASGI message's payload (a text message's in characters)."""
    payload = message.get("body") or message.get("bytes") or message.get("text")
    return len(payload) if payload else 0


def _warn_unguarded(send: Send) -> None:
    global _warned_unknown_server
    if isinstance(send, functools.partial) and not _warned_unknown_server:
        # Looks like daphne, but not as this module knows it.
        _warned_unknown_server = True
        logger.warning(
            "cannot see the server's connections: clients that do not read are "
            "not cut off (PADDLER_MAX_CLIENT_BUFFER_BYTES has no effect)"
        )
