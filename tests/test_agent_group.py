"""An agent stays in its pool's group, where a new desired state reaches it.

The web tier tells running agents of a new desired state with a channel-layer
group message.  Two ways an agent could drop out of that group without any
command failing: Redis restarts empty behind a command the client retried
(no heartbeat fails, so nothing told the agent to join again), and the
channel layer's group expiry, after which a group message first removes the
members that joined earlier.  The worker runs in this process, on a Redis of
the test's own, with its heartbeat loop; nothing is mocked.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis
from channels.layers import get_channel_layer
from django.test import override_settings

from agents.worker import AgentWorker
from balancer import keys
from tests.support.constants import GREEDY_PARAMETERS
from tests.support.redis_server import RedisServer, channel_layers

# A short group expiry, so that the test outlives it (the layer's default is
# a day).
GROUP_EXPIRY_S = 4
WAIT_S = 10


@pytest.fixture
def layer_settings(own_redis: RedisServer) -> Iterator[redis.Redis]:
    layers = channel_layers(
        own_redis.url, "paddler:group-test:", group_expiry=GROUP_EXPIRY_S
    )
    with override_settings(REDIS_URL=own_redis.url, CHANNEL_LAYERS=layers):
        client = redis.Redis.from_url(own_redis.url)
        yield client
        client.close()


@pytest.fixture
async def worker(layer_settings: redis.Redis) -> AsyncIterator[AgentWorker]:
    built = AgentWorker(name="grouped", slots=1, backend="synthetic")
    await built.connect()
    await built.apply_state(
        {
            "model": {"LocalToAgent": "/nowhere/synthetic.gguf"},
            "inference_parameters": dict(GREEDY_PARAMETERS),
        }
    )
    heartbeat = asyncio.create_task(built._heartbeat_loop())
    yield built
    heartbeat.cancel()
    await asyncio.gather(heartbeat, return_exceptions=True)
    await built.shutdown()
    await built.disconnect()


async def reaches(worker: AgentWorker, marker: str) -> bool:
    """Whether a message sent to the agent's pool group now reaches it."""
    layer: Any = get_channel_layer()
    await layer.group_send(keys.agents_group(worker.pool), {"type": marker})
    try:
        async with asyncio.timeout(0.5):
            while True:
                message = await layer.receive(worker.channel)
                if message["type"] == marker:
                    return True
    except TimeoutError:
        return False


async def test_an_agent_joins_its_group_again_when_redis_forgot_it(
    worker: AgentWorker, layer_settings: redis.Redis
) -> None:
    """FLUSHALL is an empty restart without the dropped connection: every
    heartbeat goes through, and only what Redis answers tells the agent."""
    assert await reaches(worker, "before.flush")
    layer_settings.flushall()
    deadline = asyncio.get_running_loop().time() + WAIT_S
    attempt = 0
    while not await reaches(worker, f"after.flush.{attempt}"):
        attempt += 1
        assert asyncio.get_running_loop().time() < deadline, "never joined again"
    # Its report is back too (the synthetic engine stores no model metadata;
    # tests/test_model_offer.py has the agent store it again).
    report = json.loads(layer_settings.get(keys.agent_status(worker.agent_id)) or "")
    assert report["slots_total"] == 1


async def test_an_agent_stays_in_its_group_past_the_group_expiry(
    worker: AgentWorker,
) -> None:
    """A group message drops the members that joined longer ago than the
    layer's group expiry: an agent that only joined when it started would
    miss every desired state sent after that."""
    assert await reaches(worker, "at.start")
    await asyncio.sleep(GROUP_EXPIRY_S + 1.5)
    assert await reaches(worker, "past.the.expiry")
