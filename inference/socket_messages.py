"""What a client sends on the inference socket, parsed and validated.

Framework-free.  The shapes are Paddler's (PROTOCOL.md): a request is
``{"Request": {"id": "<client id>", "request": {"ContinueFromRawPrompt": {...}}}}``
(or ``ContinueFromConversationHistory``); a cancellation is
``{"Notification": {"StopRespondingTo": "<client id>"}}``.  A client may also
report an error of its own as an ``Error`` envelope, which we only log.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from balancer import request_json
from balancer.contract import GenerationKind, GenerationParams
from inference.validation import (
    InvalidRequest,
    validate_conversation,
    validate_raw_prompt,
)

# Request variant -> (dispatcher kind, validation of its parameters).
REQUEST_VARIANTS: dict[
    str, tuple[GenerationKind, Callable[[Any], GenerationParams]]
] = {
    "ContinueFromConversationHistory": ("conversation", validate_conversation),
    "ContinueFromRawPrompt": ("raw_prompt", validate_raw_prompt),
}

# How much of a client's own error report we keep (see ``_shortened``).
CLIENT_ERROR_LOGGED_CHARS = 500

_ID_HINT = re.compile(r'"id"\s*:\s*"((?:[^"\\]|\\.){1,200})"')


@dataclass(frozen=True)
class SocketRequest:
    id: str
    kind: GenerationKind
    params: GenerationParams
    # The model pool it names (our extension: ``Request.pool``); None for
    # the default pool, as every Paddler client sends it.
    pool: str | None = None


@dataclass(frozen=True)
class StopRespondingTo:
    id: str


@dataclass(frozen=True)
class ClientError:
    request_id: str | None
    description: str


SocketMessage = SocketRequest | StopRespondingTo | ClientError


class InvalidSocketMessage(ValueError):
    """A message we cannot act on; answered with a 400 ``Error`` envelope.

    ``request_id`` is the client's id when the message names one, else "".
    """

    def __init__(self, request_id: str, description: str) -> None:
        super().__init__(description)
        self.request_id = request_id
        self.description = description


def request_id_hint(text: str) -> str:
    """The client id of a message too large to parse, if it shows one early.

    Clients serialize ``{"Request": {"id": ...`` with the id first, so the
    start of the text is enough to key an error to the right request without
    parsing megabytes we are about to refuse.
    """
    match = _ID_HINT.search(text[:1024])
    if match is None:
        return ""
    try:
        hint = json.loads(f'"{match.group(1)}"')
    except json.JSONDecodeError:
        return ""
    return hint if isinstance(hint, str) else ""


def _single_tag(value: Any, where: str, request_id: str = "") -> tuple[str, Any]:
    if not isinstance(value, dict) or len(value) != 1:
        raise InvalidSocketMessage(
            request_id, f"{where} must be an object with one key"
        )
    ((tag, payload),) = value.items()
    return str(tag), payload


def _parse_request(payload: Any) -> SocketRequest:
    if not isinstance(payload, dict):
        raise InvalidSocketMessage("", "Request must be an object")
    request_id = payload.get("id")
    if not isinstance(request_id, str) or not request_id:
        raise InvalidSocketMessage("", "Request.id must be a non-empty string")
    for key in payload:
        if key not in ("id", "request", "pool"):
            raise InvalidSocketMessage(request_id, f"Request.{key}: unknown field")
    variant, params = _single_tag(payload.get("request"), "Request.request", request_id)
    if variant not in REQUEST_VARIANTS:
        raise InvalidSocketMessage(
            request_id,
            f"Request.request: unknown request {variant!r}; expected one of "
            + ", ".join(REQUEST_VARIANTS),
        )
    pool = payload.get("pool")
    if pool is not None and not isinstance(pool, str):
        raise InvalidSocketMessage(request_id, "Request.pool must be a string")
    kind, validate = REQUEST_VARIANTS[variant]
    try:
        return SocketRequest(request_id, kind, validate(params), pool)
    except InvalidRequest as error:
        raise InvalidSocketMessage(request_id, str(error)) from None


def _shortened(text: str) -> str:
    """At most ``CLIENT_ERROR_LOGGED_CHARS`` of a client's text, for our log.

    A client's error report is logged; the whole of it could be megabytes.
    """
    if len(text) <= CLIENT_ERROR_LOGGED_CHARS:
        return text
    return f"{text[:CLIENT_ERROR_LOGGED_CHARS]}... ({len(text)} characters)"


def _dumps(value: Any) -> str:
    try:
        return json.dumps(value)
    except RecursionError:
        return "(nested too deeply to show)"


def parse_socket_message(text: str) -> SocketMessage:
    try:
        data = request_json.loads(text)
    except request_json.InvalidJson as error:
        # Surrogates, huge integers and NaN as the HTTP endpoints refuse them.
        raise InvalidSocketMessage(request_id_hint(text), f"message {error}") from None
    except RecursionError:
        # As the HTTP endpoints say it; the parser's own words name a limit of
        # the Python stack, which tells a client nothing.
        raise InvalidSocketMessage("", "message is nested too deeply") from None
    tag, payload = _single_tag(data, "a message")
    if tag == "Request":
        return _parse_request(payload)
    if tag == "Notification":
        name, target = _single_tag(payload, "Notification")
        if name != "StopRespondingTo" or not isinstance(target, str):
            raise InvalidSocketMessage(
                "", 'Notification must be {"StopRespondingTo": "<request id>"}'
            )
        return StopRespondingTo(target)
    if tag == "Error":
        request_id = payload.get("request_id") if isinstance(payload, dict) else None
        return ClientError(
            request_id if isinstance(request_id, str) else None,
            _shortened(_dumps(payload)),
        )
    raise InvalidSocketMessage(
        "", f"unknown message {tag!r}; expected Request or Notification"
    )
