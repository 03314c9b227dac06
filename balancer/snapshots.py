"""What the management API shows of the fleet: plain reads and their streams."""

from __future__ import annotations

from typing import Any

from django.conf import settings

from balancer import registry
from balancer.dispatch import get_dispatcher


async def agents_snapshot() -> dict[str, Any]:
    agents = await registry.list_agents(get_dispatcher().redis)
    return {"agents": [agent.public_snapshot() for agent in agents]}


async def buffer_snapshot() -> dict[str, Any]:
    count = await registry.buffered_count(
        get_dispatcher().redis, settings.PADDLER_BUFFERED_REQUEST_TIMEOUT_MS
    )
    return {"buffered_requests_current": count}
