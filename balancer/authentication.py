"""Who may use the management API: the bearer token, or a staff session."""

from __future__ import annotations

import functools
import hmac
from collections.abc import Callable, Coroutine
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponseBase, JsonResponse

View = Callable[..., Coroutine[Any, Any, HttpResponseBase]]


def token_matches(header: str | None) -> bool:
    token = settings.PADDLER_MANAGEMENT_TOKEN
    if not token or not header or not header.startswith("Bearer "):
        return False
    return hmac.compare_digest(header[len("Bearer ") :].strip(), token)


async def is_operator(request: HttpRequest) -> bool:
    if token_matches(request.headers.get("Authorization")):
        return True
    user = await request.auser()
    return bool(user.is_authenticated and user.is_staff)


def operator_required(view: View) -> View:
    """401 unless the caller has the management token or a staff session."""

    @functools.wraps(view)
    async def wrapper(
        request: HttpRequest, *args: Any, **kwargs: Any
    ) -> HttpResponseBase:
        if not await is_operator(request):
            response = JsonResponse(
                {
                    "error": "authentication required: send 'Authorization: Bearer "
                    "<PADDLER_MANAGEMENT_TOKEN>' or log in as staff"
                },
                status=401,
            )
            response["WWW-Authenticate"] = 'Bearer realm="paddler-management"'
            return response
        return await view(request, *args, **kwargs)

    return wrapper
