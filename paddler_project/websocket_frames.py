"""daphne's WebSocket connections send a frame without building a log line.

Every frame daphne sends ends in autobahn's ``sendData``, which builds the
arguments of a debug log line before it calls the logger, whether or not
debug logging is on: the method's qualified name and the peer's address,
each coloured with ``click.style`` (click is installed: huggingface_hub
needs it).  That is about 8 us of CPU per frame on our 2-core machine, and a
WebSocket stream sends a frame per token.

``install`` gives daphne's protocol a ``sendData`` that takes the path of a
token's frame itself: written whole and at once (no chopping, nothing queued
before it, not asked to be synchronous) on an open connection, with debug
and octet logging off.  It writes the frame and counts its bytes as autobahn
does.  Every other case, including debug logging switched on, goes to
autobahn's own ``sendData``.

This reads autobahn's and txaio's internals (``send_queue``,
``trafficStats``, a disabled log level bound to txaio's ``_no_op``);
``tests/test_websocket_frames.py`` fails if they change.
"""

from __future__ import annotations

from typing import Any

from daphne.ws_protocol import WebSocketProtocol
from txaio import tx

_installed = False


def install() -> None:
    """Give daphne's WebSocket protocol the lean ``sendData`` (once per process)."""
    global _installed
    if _installed:
        return
    _installed = True
    send_data = WebSocketProtocol.sendData
    disabled = tx._no_op
    open_state = WebSocketProtocol.STATE_OPEN

    def lean_send_data(
        self: Any, data: bytes, sync: bool = False, chopsize: int | None = None
    ) -> None:
        if (
            sync
            or chopsize
            or self.send_queue
            or self.logOctets
            or self.state != open_state
            or self.log.debug is not disabled
        ):
            send_data(self, data, sync, chopsize)
            return
        self.transport.write(data)
        self.trafficStats.outgoingOctetsWireLevel += len(data)

    WebSocketProtocol.sendData = lean_send_data


def installed() -> bool:
    return _installed
