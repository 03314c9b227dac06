"""Two Django handlers: the inference endpoints on a short middleware stack.

The panel and the management API need the whole stack (sessions, CSRF, the
logged-in user, messages).  The inference endpoints need none of it: callers
authenticate with an API key, send JSON and never a form, and get no cookie.
They are the hot path: every middleware of the whole stack that runs on a
worker thread (``paddler_project.middleware``) adds to a request's first
token.  So requests for them go to a handler built with
``settings.INFERENCE_MIDDLEWARE``; the URLs and views are the same.

That handler also serves each request without Django's trips to a worker
thread.  Django's ``ASGIHandler`` starts a thread of its own for every request
(``ThreadSensitiveContext``), and sends ``request_started`` and
``request_finished`` and closes the response there: their receivers look after
the database connections of the thread they run on.  An inference request
uses no database connection on its own thread (the keys and pools are read by
``balancer.shared_read``, which closes its connection at once), so those
receivers have nothing to do for it: it runs them on the event loop, where no
connection can be open (Django refuses to open one there), and starts no
thread.  With 8 clients posting short requests, that was about a fifth of the
web process's CPU per request (py-spy: starting and joining the thread, the
trips there and back).  Unless a middleware of the inference stack is
synchronous only (django-statsd's, when StatsD is on): then each request has
its thread again, as under Django's handler.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import ThreadSensitiveContext
from django.conf import settings
from django.core import signals
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.http import HttpResponseBase
from django.test.utils import override_settings
from django.urls import set_script_prefix
from django.utils.module_loading import import_string

Scope = dict[str, Any]
ASGIApp = Callable[[Scope, Any, Any], Awaitable[None]]

# The Paddler-compatible and OpenAI-compatible inference endpoints, and the
# health check.  The inference WebSocket is not Django's (asgi.py).
INFERENCE_PATHS = (
    "/api/v1/continue_from_raw_prompt",
    "/api/v1/continue_from_conversation_history",
    "/api/v1/generate_embedding_batch",
    "/v1/",
    "/health",
)


def is_inference_path(path: str) -> bool:
    return path.startswith(INFERENCE_PATHS)


class InferenceHandler(ASGIHandler):
    """Django's ASGI handler with ``INFERENCE_MIDDLEWARE`` as its middleware."""

    def load_middleware(self, is_async: bool = False) -> None:
        # Django builds the chain from settings.MIDDLEWARE, once, here.
        with override_settings(MIDDLEWARE=settings.INFERENCE_MIDDLEWARE):
            super().load_middleware(is_async=is_async)
        # A middleware that cannot run on the event loop (django-statsd's,
        # when StatsD is on) runs on a worker thread, and the view under it
        # is called from there and waits, in the buffer if need be: such a
        # request needs a thread of its own, or every other request of the
        # process would queue behind it for the one shared thread.
        self.on_loop = all(
            getattr(import_string(path), "async_capable", False)
            for path in settings.INFERENCE_MIDDLEWARE
        )

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        # Only HTTP comes here (``ByPath``).
        if self.on_loop:
            # No thread of the request's own (see the module's docstring).
            await self.handle(scope, receive, send)
        else:
            async with ThreadSensitiveContext():
                await self.handle(scope, receive, send)

    async def handle(self, scope: Scope, receive: Any, send: Any) -> None:
        """Django's ``ASGIHandler.handle`` with the signals and the response's
        closing on the event loop.

        As there, the response is made and sent in a task of its own while
        another listens for the client's disconnect, which cancels it: a
        stream whose client went away ends at once and frees its slot.
        """
        try:
            body = await self.read_body(receive)
        except RequestAborted:
            return
        set_script_prefix(get_script_prefix(scope))
        signals.request_started.send(sender=self.__class__, scope=scope)
        request, refusal = self.create_request(scope, body)
        if request is None:
            assert refusal is not None
            body.close()
            await self.send_response(refusal, send)
            refusal.close()
            return

        async def respond() -> HttpResponseBase:
            response: HttpResponseBase = await self.run_get_response(request)
            with contextlib.suppress(asyncio.CancelledError):
                # The client went away while it was being sent.
                await self.send_response(response, send)
            return response

        listen = asyncio.create_task(self.listen_for_disconnect(receive))
        serve = asyncio.create_task(respond())
        try:
            await asyncio.wait((listen, serve), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (listen, serve):
                if not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
        if listen.done() and not listen.cancelled():
            with contextlib.suppress(RequestAborted):
                listen.result()
        if serve.cancelled():
            signals.request_finished.send(sender=self.__class__)
        else:
            serve.result().close()
        body.close()


class ByPath:
    """ASGI: inference paths to one application, every other to another."""

    def __init__(self, inference: ASGIApp, everything_else: ASGIApp) -> None:
        self.inference = inference
        self.everything_else = everything_else

    async def __call__(self, scope, receive, send):  # type: ignore[no-untyped-def]
        path = scope["path"].removeprefix(scope.get("root_path") or "")
        if is_inference_path(path):
            await self.inference(scope, receive, send)
        else:
            await self.everything_else(scope, receive, send)
