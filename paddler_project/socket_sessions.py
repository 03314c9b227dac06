"""The inference socket's session: read for the handshake, never saved.

channels' ``SessionMiddlewareStack`` puts the Django session (from the
cookie) in the scope, and wraps the application's ``send`` to save a
modified session when an HTTP response starts.  A WebSocket sends no such
message, so on a socket that wrapper saves nothing: it only reads the
session's state (twice, through a ``LazyObject``) for every message sent,
about 6% of the web process's CPU per token with 8 WebSocket streams
(py-spy).  The inference socket reads the session once, to admit a staff
member of the panel's playground (``inference.socket_admission``), and never
changes it.

``socket_session_stack`` puts the session in the scope as channels' stack does
and hands the consumer the server's own ``send``.
"""

from __future__ import annotations

from typing import Any

from channels.sessions import CookieMiddleware, InstanceSessionWrapper

Scope = dict[str, Any]


class SocketSessionMiddleware:
    """The session in the scope, read from its cookie; ``send`` untouched."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> Any:
        wrapper = InstanceSessionWrapper(scope, send)
        await wrapper.resolve_session()
        return await self.inner(wrapper.scope, receive, send)


def socket_session_stack(inner: Any) -> Any:
    """Cookies, then the session, around a WebSocket application."""
    return CookieMiddleware(SocketSessionMiddleware(inner))
