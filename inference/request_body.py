"""The body of an inference request over HTTP: bounded in size, parsed as JSON."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest

from balancer import request_json
from inference.validation import InvalidRequest


class BodyTooLarge(Exception):
    def __init__(self) -> None:
        limit = settings.PADDLER_MAX_REQUEST_BYTES
        super().__init__(f"request body is larger than {limit} bytes")


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


def read_json(request: HttpRequest) -> Any:
    """The parsed body; ``InvalidRequest`` or ``BodyTooLarge`` otherwise.

    Parsed by ``request_json``, which refuses what would fail later (huge
    integers, NaN, lone surrogates) with a 400 here instead of a 500 there.
    """
    try:
        return request_json.loads(read_body(request))
    except request_json.InvalidJson as error:
        raise InvalidRequest("body", str(error)) from None
    except UnicodeDecodeError as error:
        raise InvalidRequest("body", f"is not valid JSON: {error}") from None
    except RecursionError:
        raise InvalidRequest("body", "is nested too deeply") from None
