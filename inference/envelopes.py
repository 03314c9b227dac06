"""The Paddler wire form of output items: ``Response`` and ``Error`` envelopes.

Framework-free; shared by the NDJSON views (one envelope a line) and the
inference socket (one envelope a message).
"""

from __future__ import annotations

import json
from typing import TypedDict

from balancer.contract import ItemError, OutputItem, Response, content_token_text


class ResponseBody(TypedDict):
    generated_by: str
    request_id: str
    response: Response | None


class ResponseEnvelope(TypedDict):
    Response: ResponseBody


class ErrorBody(TypedDict):
    request_id: str
    error: ItemError


class ErrorEnvelope(TypedDict):
    Error: ErrorBody


Envelope = ResponseEnvelope | ErrorEnvelope


def paddler_envelope(
    item: OutputItem, agent_name: str, request_id: str | None = None
) -> Envelope:
    """The wire form of one output item (PROTOCOL.md).

    ``request_id`` replaces the dispatcher's own id: on the inference socket
    envelopes carry the id the client chose.
    """
    request_id = item["request_id"] if request_id is None else request_id
    if item["error"] is not None:
        return {"Error": {"request_id": request_id, "error": item["error"]}}
    return {
        "Response": {
            "generated_by": agent_name,
            "request_id": request_id,
            "response": item["response"],
        }
    }


def error_envelope(request_id: str, code: int, description: str) -> ErrorEnvelope:
    return {
        "Error": {
            "request_id": request_id,
            "error": {"code": code, "description": description},
        }
    }


def ndjson_line(item: OutputItem, agent_name: str) -> str:
    text = content_token_text(item)
    if text is not None:
        # The hot path, one line per token: only the text needs encoding.
        return (
            f'{{"Response": {{"generated_by": {json.dumps(agent_name)}, '
            f'"request_id": "{item["request_id"]}", "response": '
            f'{{"GeneratedToken": {{"ContentToken": {json.dumps(text)}'
            "}}}}\n"
        )
    return json.dumps(paddler_envelope(item, agent_name)) + "\n"


def socket_message(item: OutputItem, agent_name: str, request_id: str) -> str:
    """The inference socket's message for ``item``, under the client's id:
    ``json.dumps(paddler_envelope(item, agent_name, request_id))``, with a
    content token (one message a token) encoded by hand, only its text, its
    agent's name and the id needing escapes."""
    text = content_token_text(item)
    if text is not None:
        return (
            f'{{"Response": {{"generated_by": {json.dumps(agent_name)}, '
            f'"request_id": {json.dumps(request_id)}, "response": '
            f'{{"GeneratedToken": {{"ContentToken": {json.dumps(text)}'
            "}}}}"
        )
    return json.dumps(paddler_envelope(item, agent_name, request_id))
