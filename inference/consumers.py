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

from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings

from balancer.dispatch import get_dispatcher
from balancer.stream import InferenceFailure
from inference.access import WWW_AUTHENTICATE
from inference.envelopes import Envelope, error_envelope, socket_message
from inference.image_parts import prepare_params_images
from inference.socket_admission import socket_admitted
from inference.socket_messages import (
    ClientError,
    InvalidSocketMessage,
    SocketRequest,
    StopRespondingTo,
    parse_socket_message,
    request_id_hint,
)
from inference.validation import InvalidRequest

logger = logging.getLogger(__name__)


class InferenceSocketConsumer(AsyncWebsocketConsumer):  # type: ignore[misc]
    # Output reaches this consumer through the dispatcher's Redis inbox, never
    # through the channel layer; an alias that names no layer keeps Channels
    # from making (and polling) a layer channel for every socket.
    channel_layer_alias = "paddler.inference_socket.none"

    async def connect(self) -> None:
        self.in_flight: dict[str, asyncio.Task[None]] = {}
        if await socket_admitted(self.scope):
            await self.accept()
        else:
            await self._deny()

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
                        (b"www-authenticate", WWW_AUTHENTICATE.encode()),
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
                # Images fetched inside the request's task: a StopRespondingTo
                # or a closed socket cancels a slow fetch too.
                await prepare_params_images(
                    request.params, field="conversation_history"
                )
            except InvalidRequest as error:
                self._forget(request.id, task)
                await self._send_json(
                    error_envelope(request.id, error.status, str(error))
                )
                return
            try:
                dispatcher = get_dispatcher()
                pool = await dispatcher.pool_named(request.pool)
                stream = await dispatcher.open_stream(
                    request.kind, request.params, pool=pool
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
                    await self.send(
                        text_data=socket_message(item, stream.agent_name, request.id)
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

    async def _send_json(self, payload: Envelope) -> None:
        await self.send(text_data=json.dumps(payload))
