"""The Paddler-compatible inference API over HTTP: NDJSON token streams."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from django.conf import settings
from django.http import (
    HttpRequest,
    HttpResponse,
    HttpResponseBase,
    JsonResponse,
    StreamingHttpResponse,
)
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from balancer.dispatch import InferenceFailure, Stream, get_dispatcher
from balancer.events import OutputItem
from inference.validation import (
    InvalidRequest,
    validate_conversation,
    validate_embedding_batch,
    validate_raw_prompt,
)


async def health(request: HttpRequest) -> HttpResponseBase:
    return HttpResponse("OK", content_type="text/plain")


def error_response(code: int, description: str) -> JsonResponse:
    return JsonResponse(
        {"error": {"code": code, "description": description}}, status=code
    )


def paddler_envelope(item: OutputItem, agent_name: str) -> dict[str, Any]:
    """The wire form of one output item (PROTOCOL.md)."""
    if item["error"] is not None:
        return {"Error": {"request_id": item["request_id"], "error": item["error"]}}
    return {
        "Response": {
            "generated_by": agent_name,
            "request_id": item["request_id"],
            "response": item["response"],
        }
    }


def read_json(request: HttpRequest) -> Any:
    """The parsed body; ``InvalidRequest`` (or 413 via the caller) otherwise."""
    try:
        return json.loads(request.body)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InvalidRequest("body", f"is not valid JSON: {error}") from None
    except RecursionError:
        raise InvalidRequest("body", "is nested too deeply") from None


def ndjson_line(item: OutputItem, agent_name: str) -> str:
    response = item["response"]
    if item["error"] is None and isinstance(response, dict):
        generated = response.get("GeneratedToken")
        if isinstance(generated, dict) and len(generated) == 1:
            text = generated.get("ContentToken")
            if isinstance(text, str):
                # The hot path, one line per token: only the text needs encoding.
                return (
                    f'{{"Response": {{"generated_by": {json.dumps(agent_name)}, '
                    f'"request_id": "{item["request_id"]}", "response": '
                    f'{{"GeneratedToken": {{"ContentToken": {json.dumps(text)}'
                    "}}}}\n"
                )
    return json.dumps(paddler_envelope(item, agent_name)) + "\n"


async def _ndjson(stream: Stream) -> AsyncIterator[bytes]:
    async for batch in stream.batches():
        yield "".join(ndjson_line(item, stream.agent_name) for item in batch).encode()


async def _stream(kind: str, params: dict[str, Any]) -> HttpResponseBase:
    try:
        stream = await get_dispatcher().open_stream(kind, params)
    except InferenceFailure as failure:
        return error_response(failure.code, failure.description)
    return StreamingHttpResponse(_ndjson(stream), content_type="application/json")


def _too_large(request: HttpRequest) -> HttpResponseBase | None:
    length = request.headers.get("Content-Length")
    if length and length.isdigit() and int(length) > settings.PADDLER_MAX_REQUEST_BYTES:
        return error_response(
            413,
            f"request body is larger than {settings.PADDLER_MAX_REQUEST_BYTES} bytes",
        )
    return None


@csrf_exempt
@require_POST
async def continue_from_raw_prompt(request: HttpRequest) -> HttpResponseBase:
    if (response := _too_large(request)) is not None:
        return response
    try:
        params = validate_raw_prompt(read_json(request))
    except InvalidRequest as error:
        return error_response(400, str(error))
    return await _stream("raw_prompt", params)


@csrf_exempt
@require_POST
async def continue_from_conversation_history(request: HttpRequest) -> HttpResponseBase:
    if (response := _too_large(request)) is not None:
        return response
    try:
        params = validate_conversation(read_json(request))
    except InvalidRequest as error:
        return error_response(400, str(error))
    return await _stream("conversation", params)


@csrf_exempt
@require_POST
async def generate_embedding_batch(request: HttpRequest) -> HttpResponseBase:
    if (response := _too_large(request)) is not None:
        return response
    try:
        params = validate_embedding_batch(read_json(request))
    except InvalidRequest as error:
        return error_response(400, str(error))
    return await _stream("embeddings", params)
