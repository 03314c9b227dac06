"""The management API (Paddler-compatible): agents, buffer, desired state."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.http import (
    HttpRequest,
    HttpResponse,
    HttpResponseBase,
    JsonResponse,
    StreamingHttpResponse,
)
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_http_methods

from balancer import keys, registry
from balancer.authentication import operator_required
from balancer.dispatch import get_dispatcher
from balancer.metrics import prometheus_text
from balancer.services import desired_state_current, desired_state_update
from inference.desired_state import DesiredState, DesiredStateError

# SSE streams look for changes this often, and send a comment when idle.
STREAM_POLL_S = 0.25
STREAM_KEEPALIVE_S = 10.0


def _bad_request(message: str, field: str | None = None) -> JsonResponse:
    body: dict[str, Any] = {"error": message}
    if field is not None:
        body["field"] = field
    return JsonResponse(body, status=400)


async def agents_snapshot() -> dict[str, Any]:
    agents = await registry.list_agents(get_dispatcher().redis)
    return {"agents": [agent.public_snapshot() for agent in agents]}


async def buffer_snapshot() -> dict[str, Any]:
    count = await registry.buffered_count(
        get_dispatcher().redis, settings.PADDLER_BUFFERED_REQUEST_TIMEOUT_MS
    )
    return {"buffered_requests_current": count}


def _sse(snapshot: Callable[[], Awaitable[dict[str, Any]]]) -> StreamingHttpResponse:
    async def events() -> AsyncIterator[str]:
        last: str | None = None
        idle = 0.0
        while True:
            current = json.dumps(await snapshot())
            if current != last:
                last = current
                idle = 0.0
                yield f"data: {current}\n\n"
            elif idle >= STREAM_KEEPALIVE_S:
                idle = 0.0
                yield ": keep-alive\n\n"
            await asyncio.sleep(STREAM_POLL_S)
            idle += STREAM_POLL_S

    response = StreamingHttpResponse(events(), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response


@require_GET
@operator_required
async def agents(request: HttpRequest) -> HttpResponseBase:
    return JsonResponse(await agents_snapshot())


@require_GET
@operator_required
async def agents_stream(request: HttpRequest) -> HttpResponseBase:
    return _sse(agents_snapshot)


@require_GET
@operator_required
async def buffered_requests(request: HttpRequest) -> HttpResponseBase:
    return JsonResponse(await buffer_snapshot())


@require_GET
@operator_required
async def buffered_requests_stream(request: HttpRequest) -> HttpResponseBase:
    return _sse(buffer_snapshot)


@csrf_exempt
@require_http_methods(["GET", "PUT"])
@operator_required
async def balancer_desired_state(request: HttpRequest) -> HttpResponseBase:
    if request.method == "GET":
        state = await sync_to_async(desired_state_current)()
        return JsonResponse(state.to_json())
    try:
        body = json.loads(request.body)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        return _bad_request(f"body is not valid JSON: {error}")
    except RecursionError:
        return _bad_request("body is nested too deeply")
    try:
        state = DesiredState.from_json(body)
    except DesiredStateError as error:
        return _bad_request(str(error), error.field)
    user = await request.auser()
    await sync_to_async(desired_state_update)(state=state, user=user, note="API")
    return HttpResponse(status=204)


@require_GET
@operator_required
async def balancer_applicable_state(request: HttpRequest) -> HttpResponseBase:
    raw = await get_dispatcher().redis.get(keys.desired_state())
    return HttpResponse(raw or b"null", content_type="application/json")


async def _known_agent(agent_id: str) -> bool:
    return await registry.agent_is_alive(get_dispatcher().redis, agent_id)


@require_GET
@operator_required
async def agent_chat_template_override(
    request: HttpRequest, agent_id: str
) -> HttpResponseBase:
    if not await _known_agent(agent_id):
        return JsonResponse({"error": f"no agent {agent_id}"}, status=404)
    state = await sync_to_async(desired_state_current)()
    if not state.use_chat_template_override or state.chat_template_override is None:
        return HttpResponse(b"null", content_type="application/json")
    return JsonResponse({"content": state.chat_template_override})


@require_GET
@operator_required
async def agent_model_metadata(request: HttpRequest, agent_id: str) -> HttpResponseBase:
    if not await _known_agent(agent_id):
        return JsonResponse({"error": f"no agent {agent_id}"}, status=404)
    raw = await get_dispatcher().redis.get(keys.agent_metadata(agent_id))
    if raw is None:
        return HttpResponse(b"null", content_type="application/json")
    return JsonResponse({"metadata": json.loads(raw)["metadata"]})


@require_GET
@operator_required
async def metrics(request: HttpRequest) -> HttpResponseBase:
    text = await prometheus_text(get_dispatcher().redis)
    return HttpResponse(text, content_type="text/plain; version=0.0.4")
