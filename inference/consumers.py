"""The inference socket: many Paddler requests multiplexed on one WebSocket.

Each request runs as its own task, keyed by the id the client chose; every
envelope sent back carries that id.  Closing a request's stream (it finished,
the client sent ``StopRespondingTo``, or the socket closed) cancels it on the
agent and frees its slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any
from urllib.parse import parse_qs, urlsplit

from channels.auth import get_user
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.http.request import split_domain_port, validate_host

from balancer.dispatch import get_dispatcher
from balancer.stream import InferenceFailure
from inference.api_keys import bearer_token
from inference.envelopes import error_envelope, paddler_envelope
from inference.services import inference_access_allowed
from inference.socket_messages import (
    ClientError,
    InvalidSocketMessage,
    SocketRequest,
    StopRespondingTo,
    parse_socket_message,
    request_id_hint,
)

logger = logging.getLogger(__name__)


def socket_token(scope: dict[str, Any]) -> str | None:
    """The API key of a socket: the bearer header, or the ``token`` parameter.

    Browsers cannot set headers on a WebSocket, hence the query parameter.
    """
    for name, value in scope.get("headers", []):
        if name.lower() == b"authorization":
            token = bearer_token(value.decode("latin-1"))
            if token is not None:
                return token
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    tokens = query.get("token")
    return tokens[0] if tokens else None


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return None


def host_allowed(host: str | None) -> bool:
    """Whether ``host`` (a ``Host`` header) is one Django would serve.

    As ``HttpRequest.get_host`` decides it: ``ALLOWED_HOSTS``, or the
    loopback names under ``DEBUG`` with none configured.
    """
    if not host:
        return False
    domain, _port = split_domain_port(host)
    allowed = settings.ALLOWED_HOSTS
    if settings.DEBUG and not allowed:
        allowed = [".localhost", "127.0.0.1", "[::1]"]
    return bool(domain) and validate_host(domain, allowed)


def origin_allowed(scope: dict[str, Any]) -> bool:
    """Whether the page that opened the socket, if any, may use it.

    A socket without ``Origin`` comes from a program (paddler-client,
    websockets, curl), not a browser: browsers always send one.  A browser's
    page may use the socket when it is of this site (its origin names the
    ``Host``, which is allowed), or listed in ``PADDLER_ALLOWED_ORIGINS``.
    """
    origin = _header(scope, b"origin")
    if origin is None:
        return True
    allowed: list[str] = settings.PADDLER_ALLOWED_ORIGINS
    if "*" in allowed or origin in allowed:
        return True
    return same_site(scope)


def same_site(scope: dict[str, Any]) -> bool:
    """Whether the page that opened the socket is on this site.

    As Django's CSRF check decides for forms: the ``Origin`` names this very
    host, or one of ``CSRF_TRUSTED_ORIGINS`` (a proxy that rewrites the Host
    header needs it there).
    """
    origin, host = _header(scope, b"origin"), _header(scope, b"host")
    if not origin:
        return False
    if origin in settings.CSRF_TRUSTED_ORIGINS:
        return True
    return host is not None and urlsplit(origin).netloc == host


async def staff_session(scope: dict[str, Any]) -> bool:
    """Whether the socket comes from a staff user logged in to the panel.

    The panel's playground has no API key; it has the session cookie, which a
    browser sends along with a handshake from any site.  So a session counts
    only from a page of this site (else a page elsewhere could use the
    operator's login: cross-site WebSocket hijacking).
    """
    if "session" not in scope or not same_site(scope):
        return False
    user = await get_user(scope)
    return bool(user.is_active and user.is_staff)


class InferenceSocketConsumer(AsyncWebsocketConsumer):  # type: ignore[misc]
    # Output reaches this consumer through the dispatcher's Redis inbox, never
    # through the channel layer; an alias that names no layer keeps Channels
    # from making (and polling) a layer channel for every socket.
    channel_layer_alias = "paddler.inference_socket.none"

    async def connect(self) -> None:
        self.in_flight: dict[str, asyncio.Task[None]] = {}
        if await self._admitted():
            await self.accept()
        else:
            await self._deny()

    async def _admitted(self) -> bool:
        """Whether this socket may be opened; logs why not.

        A socket is a browser's way around CORS: any page may open one to any
        address, its user's loopback included.  So with no API key required
        (the open default), only pages of this site, or listed ones, get in.
        A key is proof enough, whatever the page: a page elsewhere cannot know
        it.  The ``Host`` is checked first, as Django checks it for HTTP: a
        page of an attacker's domain that resolves to 127.0.0.1 (DNS
        rebinding) is "same-origin" with the socket, but names its own host.
        """
        host = _header(self.scope, b"host")
        # Browsers always send Host; a client without one is a program (or an
        # in-process test), which no rebinding can steer.
        if host is not None and not host_allowed(host):
            logger.warning(
                "inference socket refused: Host %r is not in PADDLER_ALLOWED_HOSTS",
                (host or "")[:200],
            )
            return False
        token = socket_token(self.scope)
        if await inference_access_allowed(token=None):
            # Open: no key exists, so whatever token came proves nothing.
            if origin_allowed(self.scope):
                return True
            logger.warning(
                "inference socket refused: Origin %r is neither this site nor in "
                "PADDLER_ALLOWED_ORIGINS",
                (_header(self.scope, b"origin") or "")[:200],
            )
            return False
        if token is not None and await inference_access_allowed(token=token):
            return True
        return await staff_session(self.scope)

    async def _deny(self) -> None:
        # An ASGI server with the denial-response extension answers 401; daphne
        # has none and refuses a closed handshake with 403.
        if "websocket.http.response" in self.scope.get("extensions", {}):
            body = json.dumps(
                {"error": {"code": 401, "description": "an API key is required"}}
            ).encode()
            await self.base_send(
                {
                    "type": "websocket.http.response.start",
                    "status": 401,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"www-authenticate", b'Bearer realm="paddler-inference"'),
                    ],
                }
            )
            await self.base_send({"type": "websocket.http.response.body", "body": body})
        else:
            await self.close()

    async def disconnect(self, code: int) -> None:
        tasks = list(self.in_flight.values())
        self.in_flight.clear()
        for task in tasks:
            task.cancel()
        # Each task closes its stream as it ends, which frees its slot.
        await asyncio.gather(*tasks, return_exceptions=True)

    async def receive(
        self, text_data: str | None = None, bytes_data: bytes | None = None
    ) -> None:
        limit = settings.PADDLER_MAX_REQUEST_BYTES
        if text_data is not None:
            # Characters first: a text longer than the limit is over it
            # without encoding megabytes to count their bytes.
            too_large = len(text_data) > limit or len(text_data.encode()) > limit
            start = text_data[:1024]
        else:
            # A binary message is read as the same JSON, if it is UTF-8.
            # (Invalid UTF-8 in a text message never gets here: daphne closes
            # the socket with 1007, as RFC 6455 asks.)
            raw = bytes_data or b""
            too_large = len(raw) > limit
            start = raw[:1024].decode("utf-8", errors="replace")
            if not too_large:
                try:
                    text_data = raw.decode("utf-8")
                except UnicodeDecodeError as error:
                    await self._send_json(
                        error_envelope(
                            request_id_hint(start),
                            400,
                            f"message is not UTF-8: {error}",
                        )
                    )
                    return
        if too_large or text_data is None:
            await self._send_json(
                error_envelope(
                    request_id_hint(start), 413, f"message is larger than {limit} bytes"
                )
            )
            return
        try:
            message = parse_socket_message(text_data)
        except InvalidSocketMessage as error:
            await self._send_json(
                error_envelope(error.request_id, 400, error.description)
            )
            return
        if isinstance(message, SocketRequest):
            await self._start(message)
        elif isinstance(message, StopRespondingTo):
            task = self.in_flight.pop(message.id, None)
            if task is not None:
                task.cancel()
        elif isinstance(message, ClientError):
            logger.warning("inference socket client reported %s", message.description)

    async def _start(self, request: SocketRequest) -> None:
        if request.id in self.in_flight:
            await self._send_json(
                error_envelope(
                    request.id,
                    400,
                    f"request {request.id!r} is already in flight on this socket",
                )
            )
            return
        self.in_flight[request.id] = asyncio.create_task(
            self._serve(request), name=f"inference-socket-{request.id}"
        )

    async def _serve(self, request: SocketRequest) -> None:
        task = asyncio.current_task()
        try:
            try:
                stream = await get_dispatcher().open_stream(
                    request.kind, request.params
                )
            except InferenceFailure as failure:
                self._forget(request.id, task)
                await self._send_json(
                    error_envelope(request.id, failure.code, failure.description)
                )
                return
            try:
                async for item in stream.items():
                    if item["final"]:
                        # The client may reuse the id as soon as it reads this.
                        self._forget(request.id, task)
                    await self._send_json(
                        paddler_envelope(item, stream.agent_name, request.id)
                    )
            finally:
                await stream.close()
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("inference socket request %r failed", request.id)
            # The socket itself may be what failed; then nobody is left to tell.
            with contextlib.suppress(Exception):
                await self._send_json(
                    error_envelope(
                        request.id, 500, "internal error serving the request"
                    )
                )
        finally:
            self._forget(request.id, task)

    def _forget(self, request_id: str, task: asyncio.Task[Any] | None) -> None:
        # A StopRespondingTo, or a finished request, may have let a new
        # request reuse this id: only this request's own entry goes.
        if self.in_flight.get(request_id) is task:
            del self.in_flight[request_id]

    async def _send_json(self, payload: dict[str, Any]) -> None:
        await self.send(text_data=json.dumps(payload))
