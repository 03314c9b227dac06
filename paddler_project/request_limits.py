"""Bounds on what daphne reads of a request before the application sees it.

daphne hands a request to the ASGI application only once Twisted has read all
of it: the body goes into memory, or above 100 kB into a temporary file in
``/tmp``, however large it says it is and however slowly it comes (Twisted's
idle timeout is 12 hours, and every byte resets it).  Nothing on the ASGI side
runs before that, so a 100 MB body was written to disk before Django's 413,
and a client trickling a body in held its connection for as long as it liked.

So the limits live one level down, in the request class Twisted fills as the
bytes arrive.  ``install`` makes daphne build its requests from
``BoundedWebRequest``, which:

- answers 413 as soon as the headers announce a ``Content-Length`` over
  ``PADDLER_MAX_REQUEST_BYTES``, without reading the body;
- answers 413 as soon as a body without a length (chunked) grows past it;
- answers 408 when the request, headers and body, has not arrived whole
  within ``PADDLER_REQUEST_READ_TIMEOUT_MS`` of its first line.

After such an answer the connection is half-closed: the client reads the
answer and the end of the stream, whatever it still sends is read and thrown
away for ``LINGER_S`` (closing with unread input would make the kernel reset
the connection, and the client could lose the answer with it), then the
connection is dropped.  The application never sees the request.

It also raises daphne's WebSocket message limit (autobahn's
``maxMessagePayloadSize``, 1 MiB by default) to twice
``PADDLER_MAX_REQUEST_BYTES``: the inference socket answers a message over our
limit with the protocol's 413 ``Error`` envelope and stays open, which it can
only do for a message daphne passes on.  A message over twice the limit is
not a slip worth holding in memory: autobahn closes the socket with 1009.

This reads daphne's internals, as ``connections.py`` does: daphne 4's
``HTTPFactory`` takes the module global ``daphne.http_protocol.WebRequest``
as each connection's request factory, and Twisted's ``Request`` is told the
announced length (``gotLength``) and each piece of the body
(``handleContentChunk``) before the whole request (``requestReceived``).
``tests/test_request_limits.py`` fails if that changes.
"""

from __future__ import annotations

import io
import json
import logging
from typing import Any

from daphne import http_protocol

logger = logging.getLogger(__name__)

# How long a refused client may go on sending (thrown away) before the
# connection is dropped.
LINGER_S = 2.0
# daphne's WebSocket message limit, in multiples of ours (see the docstring).
SOCKET_LIMIT_FACTOR = 2

_REASONS = {408: b"Request Timeout", 413: b"Content Too Large"}


def _error_body(path: bytes, status: int, message: str) -> bytes:
    """The error in the shape of the API the path belongs to."""
    if path.startswith(b"/v1/"):
        code = "request_too_large" if status == 413 else "request_timeout"
        error: dict[str, Any] = {
            "message": message,
            "type": "invalid_request_error",
            "param": None,
            "code": code,
        }
    else:
        error = {"code": status, "description": message}
    return json.dumps({"error": error}).encode()


class BoundedWebRequest(http_protocol.WebRequest):  # type: ignore[misc]
    """daphne's request, refused early when it is too large or too slow."""

    max_body_bytes = 4 * 1024 * 1024
    read_timeout_s = 30.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Made when the request line arrives: the deadline covers the headers
        # as well as the body.
        super().__init__(*args, **kwargs)
        # daphne hands the raw body on; Twisted would also parse a form body
        # (urlencoded, or multipart with the email package) into ``args``,
        # which nothing reads, and answer a multipart body it cannot parse
        # with a bare 400 of its own before the application sees it.  Parsing
        # even a JSON body's Content-Type that way was about 4% of the web
        # process's CPU per short inference request (py-spy).
        self._parsePOSTFormSubmission = False
        self.body_bytes = 0
        self.refused = False
        self._deadline: Any = self.channel.callLater(
            self.read_timeout_s, self._timed_out
        )
        self._linger: Any = None
        _raise_websocket_limit(self.server, SOCKET_LIMIT_FACTOR * self.max_body_bytes)

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > self.max_body_bytes:
            self.content = io.BytesIO()
            # Twisted would send "100 Continue" next, inviting the body.
            self.requestHeaders.removeHeader(b"Expect")
            self._refuse(
                413,
                f"request body is larger than {self.max_body_bytes} bytes "
                f"(Content-Length: {length})",
            )
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self.refused:
            return  # lingering: read and thrown away
        self.body_bytes += len(data)
        if self.body_bytes > self.max_body_bytes:
            self._refuse(
                413, f"request body is larger than {self.max_body_bytes} bytes"
            )
            return
        super().handleContentChunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        self._cancel(self._deadline)
        if self.refused:
            return  # the rest of a refused body came in while lingering
        super().requestReceived(command, path, version)

    def connectionLost(self, reason: Any) -> None:
        self._cancel(self._deadline)
        self._cancel(self._linger)
        super().connectionLost(reason)

    def _timed_out(self) -> None:
        self._deadline = None
        limit_ms = round(self.read_timeout_s * 1000)
        self._refuse(
            408,
            f"the request did not arrive whole within {limit_ms} ms "
            "(PADDLER_REQUEST_READ_TIMEOUT_MS)",
        )

    def _refuse(self, status: int, message: str) -> None:
        self.refused = True
        self._cancel(self._deadline)
        transport = self.channel.transport if self.channel is not None else None
        if transport is None:
            return
        path = getattr(self.channel, "_path", b"") or b""
        client = transport.getPeer()
        logger.warning(
            "refused %s from %s:%s with %d: %s",
            path.decode("ascii", "replace")[:200],
            getattr(client, "host", "?"),
            getattr(client, "port", "?"),
            status,
            message,
        )
        body = _error_body(path, status, message)
        head = (
            b"HTTP/1.1 %d %s\r\n" % (status, _REASONS[status])
            + b"Content-Type: application/json\r\n"
            + b"Content-Length: %d\r\n" % len(body)
            + b"X-Content-Type-Options: nosniff\r\n"
            + b"Connection: close\r\n\r\n"
        )
        transport.write(head + body)
        if hasattr(transport, "loseWriteConnection"):
            transport.loseWriteConnection()
            self._linger = self.channel.callLater(LINGER_S, transport.abortConnection)
        else:
            transport.loseConnection()

    @staticmethod
    def _cancel(call: Any) -> None:
        if call is not None and call.active():
            call.cancel()


def _raise_websocket_limit(server: Any, limit: int) -> None:
    """Raise daphne's WebSocket message and frame limits to ``limit``.

    Only upwards: a larger limit an operator gave daphne stays, and so does 0
    (none).  Sockets take the factory's options when they connect.
    """
    factory = getattr(server, "ws_factory", None)
    if factory is None:
        return
    message = factory.maxMessagePayloadSize
    frame = factory.maxFramePayloadSize
    if 0 < message < limit or 0 < frame < limit:
        factory.setProtocolOptions(
            maxMessagePayloadSize=limit if 0 < message < limit else message,
            maxFramePayloadSize=limit if 0 < frame < limit else frame,
        )


def install(*, max_body_bytes: int, read_timeout_s: float) -> None:
    """Make daphne read every request through ``BoundedWebRequest``."""
    BoundedWebRequest.max_body_bytes = max_body_bytes
    BoundedWebRequest.read_timeout_s = read_timeout_s
    http_protocol.WebRequest = BoundedWebRequest
