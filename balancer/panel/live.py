"""The dashboard's live feed: agents, the buffer and recent request figures.

One snapshot per Server-Sent Event (``balancer.sse``), sent whenever it
changes.  Agents and the buffer are read at every poll; the request figures,
which parse part of the request log, every few seconds.
"""

from __future__ import annotations

import os
import time
from typing import Any

from django.conf import settings

from balancer import registry, request_log
from balancer.dispatch import get_dispatcher
from balancer.host_tier import disk_tier, host_tier
from balancer.panel import stats
from balancer.panel.words import explain_issue, explain_status
from balancer.pools import DEFAULT_POOL
from balancer.snapshots import buffer_snapshot

STATS_EVERY_S = 2.0


def dashboard_agent(agent: registry.AgentRecord) -> dict[str, Any]:
    """An agent as the management API shows it, with words for people, its
    host-memory KV tier (entries, bytes of its budget, hit rate), its disk
    tier (None without one) and whether it serves images."""
    snapshot = agent.public_snapshot()
    path = snapshot.get("model_path") or ""
    return {
        **snapshot,
        "host_cache": host_tier(agent.report),
        "disk_cache": disk_tier(agent.report),
        # A multimodal projection loaded: requests with images may come here.
        "serves_images": agent.report.get("serves_images") is True,
        "model_name": os.path.basename(path) if path else None,
        "status_words": explain_status(snapshot.get("state_application_status")),
        "issues_explained": [explain_issue(i) for i in snapshot.get("issues") or []],
    }


class DashboardFeed:
    """Builds dashboard snapshots of one model pool; request figures are kept
    a little while."""

    def __init__(self, pool: str = DEFAULT_POOL) -> None:
        self.pool = pool
        self._figures: dict[str, Any] = {}
        self._figures_at = 0.0

    async def _request_figures(self) -> dict[str, Any]:
        now = time.time()
        if now - self._figures_at >= STATS_EVERY_S:
            records = await request_log.read_since(
                get_dispatcher().redis,
                since=now - stats.WINDOW_S - stats.BUCKET_S,
                limit=settings.PADDLER_REQUEST_LOG_SIZE,
            )
            records = [record for record in records if record["pool"] == self.pool]
            self._figures = {
                "series": stats.chart_series(records, now=now),
                "summary": stats.summary(records, now=now),
            }
            self._figures_at = now
        return self._figures

    async def snapshot(self) -> dict[str, Any]:
        records = await registry.list_agents(get_dispatcher().redis)
        agents = [a for a in records if a.pool == self.pool]
        buffered = (await buffer_snapshot(self.pool))["buffered_requests_current"]
        return {
            "pool": self.pool,
            "agents": [dashboard_agent(agent) for agent in agents],
            "buffer": {
                "current": buffered,
                "max": settings.PADDLER_MAX_BUFFERED_REQUESTS,
                "timeout_ms": settings.PADDLER_BUFFERED_REQUEST_TIMEOUT_MS,
            },
            "requests": await self._request_figures(),
        }
