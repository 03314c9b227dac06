"""The OpenAI-compatible API's views.

Thin: ``requests`` checks and translates, ``output`` and ``responses`` fold
the agents' output back; the dispatcher does the rest, exactly as for the
Paddler endpoints, so greedy output is the same on both.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

from django.http import (
    HttpRequest,
    HttpResponseBase,
    JsonResponse,
)
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from balancer.contract import (
    GenerationKind,
    GenerationParams,
    OutputItem,
    content_token_text,
)
from balancer.dispatch import get_dispatcher
from balancer.sse import event_stream_response
from balancer.stream import GenerationRefused, InferenceFailure, Stream
from inference.access import api_key_required
from inference.image_parts import prepare_params_images
from inference.openai.errors import OpenAIError
from inference.openai.listing import (
    listed_model_ids,
    model_object,
    model_pool,
    models_list,
)
from inference.openai.output import (
    Collected,
    EmbeddingResults,
    Finished,
    ReasoningPiece,
    TextPiece,
    ToolCalls,
    ToolCallsFailed,
    ToolCallText,
    generation_failed_error,
    read_generation_item,
    tool_call_deltas,
)
from inference.openai.requests import (
    AnyGeneration,
    parse_chat_request,
    parse_completion_request,
    parse_embedding_request,
)
from inference.openai.responses import (
    SSE_DONE,
    Reply,
    TextEvents,
    embedding_list,
    sse,
)
from inference.openai.responses_api import (
    ResponseBuilder,
    function_call_items,
    message_item,
    parse_responses_request,
    reasoning_item,
)
from inference.request_body import BodyTooLarge, read_json
from inference.validation import InvalidRequest


def error_response(error: OpenAIError) -> JsonResponse:
    return JsonResponse(error.body(), status=error.status)


def _unauthorized(message: str) -> JsonResponse:
    return error_response(OpenAIError(401, message, code="invalid_api_key"))


def _json(request: HttpRequest) -> Any:
    """The parsed body, or ``OpenAIError`` (see ``request_body.read_json``)."""
    try:
        return read_json(request)
    except BodyTooLarge as error:
        raise OpenAIError(413, str(error), code="request_too_large") from None
    except InvalidRequest as error:
        raise OpenAIError(400, f"The body {error.message}.") from None


def _model_not_found(model: str) -> OpenAIError:
    return OpenAIError(
        404,
        f"The model '{model}' does not exist",
        param="model",
        code="model_not_found",
    )


async def _pool(model: str) -> str:
    """The pool serving ``model``, or ``OpenAIError`` 404."""
    pool = await model_pool(model)
    if pool is None:
        raise _model_not_found(model)
    return pool


async def _open(kind: GenerationKind, params: GenerationParams, model: str) -> Stream:
    pool = await _pool(model)
    try:
        await prepare_params_images(params, field="messages")
    except InvalidRequest as error:
        code = "image_too_large" if error.status == 413 else "invalid_image"
        raise OpenAIError(
            error.status, str(error), param=error.field, code=code
        ) from None
    try:
        return await get_dispatcher().open_stream(kind, params, pool=pool)
    except GenerationRefused as refused:
        # As the agent's own refusal would be (output.read_generation_item).
        raise generation_failed_error(refused.variant, refused.detail) from None
    except InferenceFailure as failure:
        raise OpenAIError(failure.code, failure.description) from None


async def _collect(stream: Stream) -> Collected:
    """The whole of a generation, or ``OpenAIError``."""
    collected = Collected()
    try:
        async for item in stream.items():
            event = read_generation_item(item)
            if isinstance(event, OpenAIError):
                raise event
            if isinstance(event, Finished):
                collected.finished = event
                return collected
            collected.add(event)
    finally:
        # Also when the client went away: the agent stops, the slot is freed.
        await stream.close()
    raise OpenAIError(502, "the generation ended without a result")


async def _events(
    stream: Stream, request: AnyGeneration, reply: Reply
) -> AsyncIterator[bytes]:
    """Server-sent events of a chat or text completion, then ``[DONE]``.

    A failure after the stream began is an ``{"error": ...}`` event, which
    OpenAI's clients raise as an ``APIError``.  Events whose items arrived
    together go out in one write.
    """
    chat = request.kind == "conversation"
    usage_kind = "chat.completion.chunk" if chat else "text_completion"
    with_usage = request.include_usage

    text_events = TextEvents(reply, chat=chat, with_usage=with_usage)

    def chunk(text: str | None, reason: str | None = None) -> bytes:
        if text and reason is None:
            return text_events.event(text)  # the hot path: one a token
        if chat:
            delta = {} if text is None else {"content": text}
            return sse(reply.chat_chunk(delta, reason, with_usage=with_usage))
        return sse(reply.completion_chunk(text or "", reason, with_usage=with_usage))

    calls: list[dict[str, Any]] = []
    held: list[str] = []

    def events(item: OutputItem) -> list[bytes]:
        event = read_generation_item(item)
        if isinstance(event, TextPiece):
            return [chunk(event.text)]
        if chat and isinstance(event, ReasoningPiece):
            thought = {"reasoning_content": event.text}
            return [sse(reply.chat_chunk(thought, with_usage=with_usage))]
        if isinstance(event, ToolCallText):
            # Sent as calls once parsed, or as content if they cannot be.
            held.append(event.text)
            return []
        if isinstance(event, ToolCalls):
            first = len(calls)
            calls.extend(event.calls)
            held.clear()
            deltas = {"tool_calls": tool_call_deltas(event.calls, first)}
            return [sse(reply.chat_chunk(deltas, with_usage=with_usage))]
        if isinstance(event, ToolCallsFailed):
            text = "".join(held)
            held.clear()
            return [chunk(text)] if text else []
        if isinstance(event, Finished):
            reason = event.finish_reason(request.max_tokens)
            ending = [chunk(None, "tool_calls" if calls else reason)]
            if with_usage:
                ending.append(sse(reply.usage_chunk(usage_kind, event.openai_usage())))
            return ending
        if isinstance(event, OpenAIError):
            return [sse(event.body())]
        return []

    try:
        if chat:
            yield sse(
                reply.chat_chunk(
                    {"role": "assistant", "content": ""}, with_usage=with_usage
                )
            )
        async for batch in stream.batches():
            lines: list[bytes] = []
            for item in batch:
                text = content_token_text(item)
                if text:
                    lines.append(text_events.event(text))  # one a token
                else:
                    lines += events(item)
            if lines:
                yield b"".join(lines)
        yield SSE_DONE
    finally:
        await stream.close()


async def _generate(request: HttpRequest, chat: bool) -> HttpResponseBase:
    try:
        body = _json(request)
        generation: AnyGeneration = (
            parse_chat_request(body) if chat else parse_completion_request(body)
        )
        stream = await _open(generation.kind, generation.params, generation.model)
    except OpenAIError as error:
        return error_response(error)
    reply = Reply.new("chatcmpl" if chat else "cmpl", generation.model)
    if generation.stream:
        return event_stream_response(_events(stream, generation, reply))
    try:
        collected = await _collect(stream)
    except OpenAIError as error:
        return error_response(error)
    finished = collected.finished
    assert finished is not None
    if chat:
        result = reply.chat_completion(
            collected.text(), finished, generation.max_tokens
        )
        choice = result["choices"][0]
        if collected.reasoning:
            choice["message"]["reasoning_content"] = "".join(collected.reasoning)
        if collected.calls:
            choice["message"]["tool_calls"] = collected.calls
            choice["message"]["content"] = collected.text() or None
            choice["finish_reason"] = "tool_calls"
    else:
        result = reply.completion(collected.text(), finished, generation.max_tokens)
    return JsonResponse(result)


@csrf_exempt
@require_POST
@api_key_required(_unauthorized)
async def chat_completions(request: HttpRequest) -> HttpResponseBase:
    return await _generate(request, chat=True)


@csrf_exempt
@require_POST
@api_key_required(_unauthorized)
async def completions(request: HttpRequest) -> HttpResponseBase:
    return await _generate(request, chat=False)


@csrf_exempt
@require_POST
@api_key_required(_unauthorized)
async def embeddings(request: HttpRequest) -> HttpResponseBase:
    try:
        embedding = parse_embedding_request(_json(request))
        try:
            batch = await get_dispatcher().open_embedding_batch(
                embedding.params, pool=await _pool(embedding.model)
            )
        except InferenceFailure as failure:
            raise OpenAIError(failure.code, failure.description) from None
        # Chunks end in any order; the results are put in input order.
        results = EmbeddingResults(embedding.count)
        try:
            async for item in batch.items():
                results.add(item)
        finally:
            await batch.close()
        return JsonResponse(
            embedding_list(
                results.in_order(),
                embedding.model,
                embedding.encoding_format,
                batch.prompt_tokens,
            )
        )
    except OpenAIError as error:
        return error_response(error)


@require_GET
@api_key_required(_unauthorized)
async def models(request: HttpRequest) -> HttpResponseBase:
    return JsonResponse(models_list(await listed_model_ids()))


@require_GET
@api_key_required(_unauthorized)
async def retrieve_model(request: HttpRequest, model: str) -> HttpResponseBase:
    if model not in await listed_model_ids():
        return error_response(_model_not_found(model))
    return JsonResponse(model_object(model))


async def _response_events(
    stream: Stream, builder: ResponseBuilder
) -> AsyncIterator[bytes]:
    """The Responses API's server-sent events: created, the items' events,
    completed (or an ``error`` event)."""
    try:
        created = builder.response("in_progress")
        for kind in ("response.created", "response.in_progress"):
            yield _named_sse(builder.event(kind, response=created))
        async for batch in stream.batches():
            written: list[bytes] = []
            for item in batch:
                event = read_generation_item(item)
                if isinstance(event, OpenAIError):
                    written.append(
                        _named_sse(
                            builder.event(
                                "error",
                                code=event.code,
                                message=event.message,
                                param=event.param,
                            )
                        )
                    )
                    continue
                written += [_named_sse(e) for e in builder.events(event)]
            if written:
                yield b"".join(written)
    finally:
        await stream.close()


def _named_sse(payload: dict[str, Any]) -> bytes:
    return f"event: {payload['type']}\n".encode() + sse(payload)


@csrf_exempt
@require_POST
@api_key_required(_unauthorized)
async def responses(request: HttpRequest) -> HttpResponseBase:
    """``POST /v1/responses``: a chat generation shaped as a response."""
    try:
        parsed = parse_responses_request(_json(request))
        generation = parsed.generation
        stream = await _open(generation.kind, generation.params, generation.model)
    except OpenAIError as error:
        return error_response(error)
    builder = ResponseBuilder(generation.model, parsed.echo, generation.max_tokens)
    if generation.stream:
        return event_stream_response(_response_events(stream, builder))
    try:
        collected = await _collect(stream)
    except OpenAIError as error:
        return error_response(error)
    if collected.reasoning:
        builder.output.append(
            reasoning_item(_item_id("rs"), "".join(collected.reasoning))
        )
    if collected.text() or not collected.calls:
        builder.output.append(message_item(_item_id("msg"), collected.text()))
    builder.output += function_call_items(collected.calls)
    return JsonResponse(builder.response("completed", collected.finished))


def _item_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"
