"""The pools the fleet gauges are reported for."""

from __future__ import annotations

from asgiref.sync import sync_to_async

from balancer import registry, services


async def fleet_pools(agents: list[registry.AgentRecord]) -> list[str]:
    """Every pool: those in the database and those agents say they serve."""
    known = await sync_to_async(services.pool_names)()
    return sorted({*known, *(agent.pool for agent in agents)})
