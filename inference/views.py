"""The Paddler-compatible inference API over HTTP: NDJSON token streams."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from django.http import (
    HttpRequest,
    HttpResponse,
    HttpResponseBase,
    JsonResponse,
    StreamingHttpResponse,
)
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from balancer.contract import ConversationParams, EmbeddingParams, RawPromptParams
from balancer.dispatch import Dispatcher, get_dispatcher
from balancer.fanout import FanOut
from balancer.stream import InferenceFailure, Stream
from inference.access import api_key_required
from inference.envelopes import ndjson_line
from inference.image_parts import prepare_params_images
from inference.request_body import BodyTooLarge, read_json
from inference.validation import (
    InvalidRequest,
    validate_conversation,
    validate_embedding_batch,
    validate_raw_prompt,
)


async def health(request: HttpRequest) -> HttpResponseBase:
    return HttpResponse("OK", content_type="text/plain")


# Names the model pool of a Paddler request; without it, the default pool.
POOL_HEADER = "X-Paddler-Pool"


def error_response(code: int, description: str) -> JsonResponse:
    return JsonResponse(
        {"error": {"code": code, "description": description}}, status=code
    )


def _unauthorized(description: str) -> JsonResponse:
    return error_response(401, description)


async def ndjson_lines(stream: Stream | FanOut) -> AsyncIterator[bytes]:
    """The stream as NDJSON; closing it early cancels the request.

    When the client disconnects, Django cancels the task serving the response
    (at whichever await it is in) and closes this iterator; the ``finally``
    then tells the agent to stop and frees the slot at once, instead of
    whenever the garbage collector finalizes the generators.  Tokens that
    arrived together go out in one write.  Each line names the agent that
    produced it: the chunks of one embedding batch run on several.
    """
    try:
        async for agent_name, batch in stream.agent_batches():
            lines = (ndjson_line(item, agent_name) for item in batch)
            yield "".join(lines).encode()
    finally:
        await stream.close()


P = TypeVar("P", RawPromptParams, ConversationParams, EmbeddingParams)


async def _serve(
    request: HttpRequest,
    validate: Callable[[Any], P],
    open_: Callable[[Dispatcher, P, str], Awaitable[Stream | FanOut]],
) -> HttpResponseBase:
    """Validate the body into the agent's params and stream the output.

    The request goes to the default pool unless its ``X-Paddler-Pool``
    header names another (our extension: Paddler has one pool)."""
    try:
        params = validate(read_json(request))
        await prepare_params_images(params, field="conversation_history")
    except BodyTooLarge as error:
        return error_response(413, str(error))
    except InvalidRequest as error:
        # 400, or 413 for images over their limits.
        return error_response(error.status, str(error))
    dispatcher = get_dispatcher()
    try:
        pool = await dispatcher.pool_named(request.headers.get(POOL_HEADER))
        stream = await open_(dispatcher, params, pool)
    except InferenceFailure as failure:
        return error_response(failure.code, failure.description)
    return StreamingHttpResponse(ndjson_lines(stream), content_type="application/json")


@csrf_exempt
@require_POST
@api_key_required(_unauthorized)
async def continue_from_raw_prompt(request: HttpRequest) -> HttpResponseBase:
    return await _serve(
        request,
        validate_raw_prompt,
        lambda dispatcher, params, pool: dispatcher.open_stream(
            "raw_prompt", params, pool=pool
        ),
    )


@csrf_exempt
@require_POST
@api_key_required(_unauthorized)
async def continue_from_conversation_history(request: HttpRequest) -> HttpResponseBase:
    return await _serve(
        request,
        validate_conversation,
        lambda dispatcher, params, pool: dispatcher.open_stream(
            "conversation", params, pool=pool
        ),
    )


@csrf_exempt
@require_POST
@api_key_required(_unauthorized)
async def generate_embedding_batch(request: HttpRequest) -> HttpResponseBase:
    return await _serve(
        request,
        validate_embedding_batch,
        lambda dispatcher, params, pool: dispatcher.open_embedding_batch(
            params, pool=pool
        ),
    )
