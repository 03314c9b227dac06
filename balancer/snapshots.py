"""What the management API shows of the fleet: plain reads and their streams."""

from __future__ import annotations

from typing import Any

from django.conf import settings

from balancer import registry
from balancer.dispatch import get_dispatcher
from balancer.pools import DEFAULT_POOL


async def agents_snapshot() -> dict[str, Any]:
    agents = await registry.list_agents(get_dispatcher().redis)
    return {"agents": [agent.public_snapshot() for agent in agents]}


async def buffer_snapshot(pool: str = DEFAULT_POOL) -> dict[str, Any]:
    """A pool's buffered requests: what an autoscaler reads to grow that
    pool's hosts."""
    count = await registry.buffered_count(
        get_dispatcher().redis, settings.PADDLER_BUFFERED_REQUEST_TIMEOUT_MS, pool
    )
    return {"buffered_requests_current": count}
