"""What every inference endpoint checks first: the API key and the body size."""

from __future__ import annotations

import functools
from collections.abc import Callable, Coroutine
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponseBase

from inference.api_keys import bearer_token
from inference.services import inference_access_allowed

View = Callable[..., Coroutine[Any, Any, HttpResponseBase]]

UNAUTHORIZED = (
    "a valid inference API key is required: send 'Authorization: Bearer <key>'"
)


class BodyTooLarge(Exception):
    def __init__(self) -> None:
        limit = settings.PADDLER_MAX_REQUEST_BYTES
        super().__init__(f"request body is larger than {limit} bytes")


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
                response["WWW-Authenticate"] = 'Bearer realm="paddler-inference"'
                return response
            return await view(request, *args, **kwargs)

        return wrapper

    return decorate


def read_body(request: HttpRequest) -> bytes:
    """The request body; ``BodyTooLarge`` above ``PADDLER_MAX_REQUEST_BYTES``."""
    limit = settings.PADDLER_MAX_REQUEST_BYTES
    length = request.headers.get("Content-Length")
    if length and length.isdigit() and int(length) > limit:
        raise BodyTooLarge
    try:
        body = request.body
    except RequestDataTooBig:
        raise BodyTooLarge from None
    # A chunked body has no Content-Length to check beforehand.
    if len(body) > limit:
        raise BodyTooLarge
    return body
