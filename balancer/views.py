"""The management API (Paddler-compatible): agents, buffer, desired state."""

from __future__ import annotations

import json
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
from django.views.decorators.http import (
    require_GET,
    require_http_methods,
    require_POST,
)

from balancer import keys, registry, request_json
from balancer.authentication import operator_required
from balancer.desired_state import DesiredStateError
from balancer.dispatch import get_dispatcher
from balancer.metrics import prometheus_text
from balancer.models import DesiredStateRevision
from balancer.pools import DEFAULT_POOL
from balancer.services import (
    desired_state_current,
    desired_state_history,
    desired_state_replace,
    desired_state_roll_back,
)
from balancer.sse import Snapshot, snapshot_events, stream_end

# Revisions listed when the caller does not say how many, and at most.
REVISIONS_DEFAULT_LIMIT = 50
REVISIONS_MAX_LIMIT = 1000


def _bad_request(message: str, field: str | None = None) -> JsonResponse:
    body: dict[str, Any] = {"error": message}
    if field is not None:
        body["field"] = field
    return JsonResponse(body, status=400)


async def agents_snapshot() -> dict[str, Any]:
    agents = await registry.list_agents(get_dispatcher().redis)
    return {"agents": [agent.public_snapshot() for agent in agents]}


async def buffer_snapshot(pool: str = DEFAULT_POOL) -> dict[str, Any]:
    count = await registry.buffered_count(
        get_dispatcher().redis, settings.PADDLER_BUFFERED_REQUEST_TIMEOUT_MS, pool
    )
    return {"buffered_requests_current": count}


def _sse(request: HttpRequest, snapshot: Snapshot) -> StreamingHttpResponse:
    events = snapshot_events(
        snapshot,
        keepalive_s=settings.PADDLER_SSE_KEEPALIVE_MS / 1000,
        end=stream_end(getattr(request, "scope", {})),
    )
    response = StreamingHttpResponse(events, content_type="text/event-stream")
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
    return _sse(request, agents_snapshot)


@require_GET
@operator_required
async def buffered_requests(request: HttpRequest) -> HttpResponseBase:
    """The default pool's buffered requests, or ``?pool=NAME``'s: what an
    autoscaler reads to grow that pool's hosts."""
    return JsonResponse(await buffer_snapshot(request.GET.get("pool", DEFAULT_POOL)))


@require_GET
@operator_required
async def buffered_requests_stream(request: HttpRequest) -> HttpResponseBase:
    pool = request.GET.get("pool", DEFAULT_POOL)
    return _sse(request, lambda: buffer_snapshot(pool))


# CSRF: token callers have no CSRF cookie; operator_required checks sessions.
@csrf_exempt
@require_http_methods(["GET", "PUT"])
@operator_required
async def balancer_desired_state(request: HttpRequest) -> HttpResponseBase:
    if request.method == "GET":
        state = await sync_to_async(desired_state_current)()
        return JsonResponse(state.to_json())
    try:
        # As the inference endpoints read bodies: NaN and infinities would pass
        # the range checks and then not round-trip through standard JSON, and
        # a lone surrogate (a chat template of "\ud800") cannot be stored.
        body = request_json.loads(request.body)
    except request_json.InvalidJson as error:
        return _bad_request(f"body {error}", "body")
    except UnicodeDecodeError as error:
        return _bad_request(f"body is not valid JSON: {error}", "body")
    except RecursionError:
        return _bad_request("body is nested too deeply", "body")
    user = await request.auser()
    try:
        await sync_to_async(desired_state_replace)(data=body, user=user, note="API")
    except DesiredStateError as error:
        return _bad_request(str(error), error.field)
    return HttpResponse(status=204)


def _revision_json(revision: DesiredStateRevision) -> dict[str, Any]:
    return {
        "id": revision.pk,
        "created_at": revision.created_at.isoformat(),
        "created_by": (
            None if revision.created_by is None else revision.created_by.get_username()
        ),
        "note": revision.note,
        "state": revision.to_state().to_json(),
    }


@require_GET
@operator_required
async def balancer_desired_state_revisions(request: HttpRequest) -> HttpResponseBase:
    """The history of the desired state, newest first (``?limit=``, default 50)."""
    raw = request.GET.get("limit", str(REVISIONS_DEFAULT_LIMIT))
    try:
        limit = int(raw)
    except ValueError:
        limit = 0
    if not 1 <= limit <= REVISIONS_MAX_LIMIT:
        return _bad_request(
            f"limit: must be an integer from 1 to {REVISIONS_MAX_LIMIT}", "limit"
        )
    revisions = await sync_to_async(desired_state_history)(limit=limit)
    return JsonResponse({"revisions": [_revision_json(r) for r in revisions]})


@csrf_exempt
@require_POST
@operator_required
async def balancer_desired_state_roll_back(
    request: HttpRequest, revision_id: int
) -> HttpResponseBase:
    """Make an earlier revision's state current again (as a new revision)."""
    user = await request.auser()
    try:
        await sync_to_async(desired_state_roll_back)(revision_id=revision_id, user=user)
    except DesiredStateRevision.DoesNotExist:
        return JsonResponse({"error": f"no revision {revision_id}"}, status=404)
    except DesiredStateError as error:
        return _bad_request(str(error), error.field)
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
