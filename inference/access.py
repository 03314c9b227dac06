"""Who may call the inference APIs: the one check of an inference API key.

Every caller of the Paddler HTTP endpoints, the OpenAI API and the inference
socket is let in by ``inference_access_allowed``; the HTTP views through
``api_key_required``, the socket through ``inference.socket_admission``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Coroutine
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponseBase

from inference.api_keys import bearer_token, key_prefix, matches_any
from inference.models import InferenceApiKey

View = Callable[..., Coroutine[Any, Any, HttpResponseBase]]

UNAUTHORIZED = (
    "a valid inference API key is required: send 'Authorization: Bearer <key>'"
)
# Sent with every 401 for a missing or wrong inference key, socket included.
WWW_AUTHENTICATE = 'Bearer realm="paddler-inference"'


async def inference_access_allowed(*, token: str | None) -> bool:
    """Whether a caller presenting ``token`` (or none) may use inference.

    With no key configured (neither ``PADDLER_INFERENCE_API_KEYS`` nor an
    active key in the database) the APIs are open, whatever token is sent:
    OpenAI clients always send one.
    """
    configured: list[str] = settings.PADDLER_INFERENCE_API_KEYS
    if token is not None:
        if configured and matches_any(token, configured):
            return True
        prefix = key_prefix(token)
        if prefix is not None:
            key = await InferenceApiKey.objects.filter(prefix=prefix).afirst()
            if key is not None and key.matches(token):
                return True
    if configured:
        return False
    return not await InferenceApiKey.objects.active().aexists()


def api_key_required(deny: Callable[[str], HttpResponseBase]) -> Callable[[View], View]:
    """401 (shaped by ``deny``) unless the request carries an accepted key."""

    def decorate(view: View) -> View:
        @functools.wraps(view)
        async def wrapper(
            request: HttpRequest, *args: Any, **kwargs: Any
        ) -> HttpResponseBase:
            token = bearer_token(request.headers.get("Authorization"))
            if not await inference_access_allowed(token=token):
                response = deny(UNAUTHORIZED)
                response["WWW-Authenticate"] = WWW_AUTHENTICATE
                return response
            return await view(request, *args, **kwargs)

        return wrapper

    return decorate
