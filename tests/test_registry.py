"""The slot claim (``balancer.registry.acquire_slot``) on a real Redis."""

from __future__ import annotations

import redis.asyncio as aioredis

from balancer import keys, registry
from tests.support.processes import stop_process
from tests.support.redis_server import start_redis


async def test_a_claim_repeated_after_a_lost_answer_claims_nothing_more() -> None:
    # redis-py sends a command again when its connection drops; if Redis ran
    # the first one, the claim is already there.  The repeat must answer with
    # that claim, not take a second slot (held for nobody until its lease
    # ran out).
    server = start_redis()
    redis = aioredis.Redis.from_url(server.url)
    try:
        for agent in ("a", "b"):
            await redis.set(keys.agent_slots(agent), 1)

        async def claim() -> registry.Acquisition:
            return await registry.acquire_slot(
                redis,
                request_id="r1",
                candidates=["a", "b"],
                lease_ms=15_000,
                max_buffered=30,
                buffer_timeout_ms=10_000,
            )

        first = await claim()
        again = await claim()
        assert (first.outcome, first.agent_id) == ("claimed", "a")
        assert (again.outcome, again.agent_id) == ("claimed", "a")
        assert await redis.zcard(keys.agent_claims("a")) == 1
        assert await redis.zcard(keys.agent_claims("b")) == 0
    finally:
        await redis.aclose()
        stop_process(server.process)
