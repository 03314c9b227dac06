"""Server-Sent Events of the management API: a snapshot whenever it changes.

A stream polls its snapshot a few times a second and sends it when it differs
from the last one sent, so a change reaches the client within a second whatever
replica or agent made it (the state lives in Redis, not in this process).  An
idle stream sends a comment now and then, which keeps proxies from cutting it.

Shutdown: daphne cancels every request, then drops the connections.  Django
runs a streaming response in a task of its own that this cancellation does
not reach, so the stream would be cut mid-body (the client sees a truncated
chunked response) and Django's leftover disconnect listener logs a traceback.
``EndStreamsOnCancel`` turns the cancellation into a request to end: the
stream stops, Django finishes the response, and only then does the request
count as cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.http import HttpRequest, StreamingHttpResponse

# How often a stream looks for a change (and whether a keep-alive is due).
POLL_S = 0.25
# Longest wait, once the server cancels a request, for its stream to end.
END_GRACE_S = 2.0
# Key of the request's ``StreamEnd`` in the ASGI scope.
SCOPE_KEY = "paddler.stream_end"

Snapshot = Callable[[], Awaitable[dict[str, Any]]]
Scope = dict[str, Any]
Receive = Callable[[], Awaitable[Mapping[str, Any]]]
Send = Callable[[Mapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


@dataclass
class StreamEnd:
    """Set when the server wants the request's stream to end."""

    requested: asyncio.Event = field(default_factory=asyncio.Event)
    # Whether a stream listens; requests without one are cancelled at once.
    listened: bool = False


def stream_end(scope: Mapping[str, Any]) -> StreamEnd:
    """The request's ``StreamEnd``; a private one (never set) without the wrapper."""
    end = scope.get(SCOPE_KEY)
    if not isinstance(end, StreamEnd):
        end = StreamEnd()
    end.listened = True
    return end


async def snapshot_events(
    snapshot: Snapshot, *, keepalive_s: float, end: StreamEnd
) -> AsyncIterator[str]:
    """SSE lines: ``data: <snapshot JSON>`` on change, ``: keep-alive`` when idle.

    Sends the current snapshot first.  Returns when ``end`` is requested; a
    client that goes away makes Django cancel it instead (``CancelledError``).
    """
    loop = asyncio.get_running_loop()
    last: str | None = None
    last_sent = loop.time()
    while not end.requested.is_set():
        current = json.dumps(await snapshot())
        now = loop.time()
        if current != last:
            last = current
            last_sent = now
            yield f"data: {current}\n\n"
        elif now - last_sent >= keepalive_s:
            last_sent = now
            yield ": keep-alive\n\n"
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(POLL_S):
                await end.requested.wait()


class EndStreamsOnCancel:
    """ASGI wrapper: a cancelled request with a stream ends it, then stops.

    Without a stream the request is cancelled at once, as without the wrapper.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        end = StreamEnd()
        inner = asyncio.ensure_future(
            self.app({**scope, SCOPE_KEY: end}, receive, send)
        )
        try:
            # Shielded: the server's cancellation must not reach Django yet.
            await asyncio.shield(inner)
        except asyncio.CancelledError:
            if not end.listened:
                inner.cancel()
                raise
            end.requested.set()
            # wait_for cancels the request after the grace time.
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(inner, END_GRACE_S)
            # The closing chunk is written to the socket on a later turn of
            # the loop; daphne disconnects everyone once this returns.
            await asyncio.sleep(0.05)
            raise


def event_stream_response(
    events: AsyncIterator[bytes] | AsyncIterator[str],
) -> StreamingHttpResponse:
    """A Server-Sent Events response: not cached, and passed on by proxies
    such as nginx event by event instead of buffered."""
    response = StreamingHttpResponse(events, content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response


def snapshot_stream(request: HttpRequest, snapshot: Snapshot) -> StreamingHttpResponse:
    """``snapshot`` as Server-Sent Events, for as long as the client stays."""
    return event_stream_response(
        snapshot_events(
            snapshot,
            keepalive_s=settings.PADDLER_SSE_KEEPALIVE_MS / 1000,
            end=stream_end(getattr(request, "scope", {})),
        )
    )
