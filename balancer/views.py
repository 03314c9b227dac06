"""The management API's streams and metrics: plain async Django views.

Server-Sent Events hold a response open and write to it as things change, and
``/metrics`` is Prometheus text: DRF runs views synchronously and renders
whole bodies, so these stay outside it (the rest is ``balancer.api``).
"""

from __future__ import annotations

from django.http import (
    HttpRequest,
    HttpResponse,
    HttpResponseBase,
)
from django.views.decorators.http import require_GET

from balancer.authentication import operator_required
from balancer.dispatch import get_dispatcher
from balancer.metrics import prometheus_text
from balancer.pools import DEFAULT_POOL
from balancer.snapshots import agents_snapshot, buffer_snapshot
from balancer.sse import snapshot_stream


@require_GET
@operator_required
async def agents_stream(request: HttpRequest) -> HttpResponseBase:
    return snapshot_stream(request, agents_snapshot)


@require_GET
@operator_required
async def buffered_requests_stream(request: HttpRequest) -> HttpResponseBase:
    """The default pool's buffered requests, or ``?pool=NAME``'s."""
    pool = request.GET.get("pool", DEFAULT_POOL)
    return snapshot_stream(request, lambda: buffer_snapshot(pool))


@require_GET
@operator_required
async def metrics(request: HttpRequest) -> HttpResponseBase:
    text = await prometheus_text(get_dispatcher().redis)
    return HttpResponse(text, content_type="text/plain; version=0.0.4")
