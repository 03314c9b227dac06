"""Errors of the management API in one shape: ``{"error", "field"?, "errors"?}``.

``error`` is a sentence a person can act on and names the field when there is
one; ``field`` names it for programs (dotted for nested values, ``body`` for
a body that is not JSON we accept); ``errors`` is DRF's per-field detail.
"""

from __future__ import annotations

from typing import Any

from rest_framework import exceptions
from rest_framework.response import Response
from rest_framework.views import exception_handler

from balancer.authentication import AUTHENTICATION_REQUIRED


def first_field_error(detail: Any, path: str = "") -> tuple[str, str]:
    """The first (dotted field, message) in a ValidationError's detail."""
    if isinstance(detail, dict):
        for key, value in detail.items():
            name = str(key) if key != "non_field_errors" else path
            return first_field_error(value, f"{path}.{name}" if path else name)
    if isinstance(detail, list) and detail:
        return first_field_error(detail[0], path)
    return path, str(detail)


def management_exception_handler(
    error: Exception, context: dict[str, Any]
) -> Response | None:
    response = exception_handler(error, context)
    if response is None:
        return None
    body: dict[str, Any]
    if isinstance(error, exceptions.ValidationError):
        field, message = first_field_error(error.detail)
        body = {
            "error": f"{field}: {message}" if field else message,
            "field": field or None,
            "errors": error.detail,
        }
    elif isinstance(error, exceptions.ParseError):
        body = {"error": str(error.detail), "field": "body"}
    elif isinstance(error, exceptions.NotAuthenticated):
        body = {"error": AUTHENTICATION_REQUIRED}
    elif isinstance(error, exceptions.APIException):
        body = {"error": str(error.detail)}
    else:
        body = {"error": str(response.data)}
    response.data = body
    return response
