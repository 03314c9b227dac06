"""Middleware that keeps requests on the event loop.

Under daphne Django runs asynchronously, and every middleware that is not
asynchronous costs a trip to a worker thread and back: Django's own
``MiddlewareMixin`` middleware runs each ``process_request`` and
``process_response`` on a thread (a dozen trips per request with the panel's
stack), and a middleware that is synchronous only, like WhiteNoise's, puts
everything below it on a thread.  Each trip is CPU time and latency that an
inference request adds before its first token: on our 2-core machine, calling
the ASGI application in-process, ``/health`` took 1.4 ms to its response with
the whole stack and 0.3 ms with the inference stack (``handlers.py``) and
these classes.

- ``StaticFilesMiddleware``: WhiteNoise, asynchronous.  A request outside
  ``STATIC_URL`` goes straight on; a static file is looked up and served by
  WhiteNoise on a thread, as before.
- ``AllowedHostMiddleware``: the ``Host`` check of the inference stack.
  Django checks ``ALLOWED_HOSTS`` only when something calls
  ``request.get_host()``: on the whole stack ``CommonMiddleware`` and the CSRF
  check do, on the inference stack nothing did, so the inference endpoints
  answered any ``Host``.  With no API keys (``make run``), that let any web
  page a user visits drive a loopback platform through DNS rebinding: a name
  of the attacker's that resolves to 127.0.0.1 makes the page same-origin
  with our port.  Its ``Host`` header still names the attacker's domain.
- ``SecurityMiddleware``: Django's, with its hooks run inline.  They only read
  settings and headers (HTTPS redirect, HSTS, ``nosniff``, referrer and
  cross-origin opener policies), so there is nothing to send to a thread.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, cast

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.core.exceptions import DisallowedHost
from django.http import HttpRequest, HttpResponse, HttpResponseBase, JsonResponse
from django.middleware import security
from whitenoise.middleware import WhiteNoiseMiddleware  # type: ignore[import-untyped]

GetResponse = Callable[[HttpRequest], Awaitable[HttpResponseBase]]


class StaticFilesMiddleware(WhiteNoiseMiddleware):  # type: ignore[misc]
    sync_capable = False
    async_capable = True

    def __init__(self, get_response: GetResponse) -> None:
        super().__init__(get_response)
        assert iscoroutinefunction(get_response)
        markcoroutinefunction(self)

    async def __call__(self, request: HttpRequest) -> HttpResponseBase:
        if request.path_info.startswith(self.static_prefix):
            response = await sync_to_async(self._serve_static)(request)
            if response is not None:
                return cast(HttpResponseBase, response)
        return cast(HttpResponseBase, await self.get_response(request))

    def _serve_static(self, request: HttpRequest) -> Any:
        """WhiteNoise's response for the file at the request's path, or None."""
        if self.autorefresh:
            static_file = self.find_file(request.path_info)
        else:
            static_file = self.files.get(request.path_info)
        if static_file is None:
            return None
        return self.serve(static_file, request)


class SecurityMiddleware(security.SecurityMiddleware):
    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        # The hooks in Django's order; a redirect to HTTPS gets its headers too.
        response = self.process_request(request) or await cast(
            GetResponse, self.get_response
        )(request)
        return self.process_response(request, cast(HttpResponse, response))


class AllowedHostMiddleware:
    """400, with a message that names the host, unless ``Host`` is allowed.

    ``/health`` answers any host: it reveals nothing, and orchestrators probe
    it by address (a Kubernetes probe sends the pod's IP as ``Host``).
    """

    sync_capable = False
    async_capable = True

    def __init__(self, get_response: GetResponse) -> None:
        self.get_response = get_response
        markcoroutinefunction(self)

    async def __call__(self, request: HttpRequest) -> HttpResponseBase:
        if request.path_info != "/health":
            try:
                request.get_host()
            except DisallowedHost:
                return host_refused(request)
        return await self.get_response(request)


def host_refused(request: HttpRequest) -> JsonResponse:
    host = request.META.get("HTTP_HOST", "")[:200]
    message = (
        f"Host {host!r} is not allowed: add it to PADDLER_ALLOWED_HOSTS "
        "to serve requests for it"
    )
    error: dict[str, object]
    if request.path_info.startswith("/v1/"):
        error = {
            "message": message,
            "type": "invalid_request_error",
            "param": None,
            "code": "host_not_allowed",
        }
    else:
        error = {"code": 400, "description": message}
    return JsonResponse({"error": error}, status=400)
