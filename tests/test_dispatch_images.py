"""Requests with images are placed from the registry view (``Dispatcher``
with ``balancer.agent_index``), on a real Redis: only agents that serve
images are offered, without reading the whole registry."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from django.test import override_settings

from balancer import registry, registry_view
from balancer.contract import ConversationParams
from balancer.dispatch import Dispatcher
from balancer.images import data_url
from balancer.registry import AgentRecord
from balancer.stream import GenerationRefused, InferenceFailure, Stream
from tests.support.redis_server import RedisServer
from tests.test_registry_view import until

TTL_MS = 3_000
PICTURE = data_url("image/png", b"\x89PNG\r\n\x1a\n picture")


@pytest.fixture
async def dispatcher(
    own_redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Dispatcher]:
    """A dispatcher whose view follows ``own_redis``, and that fails the
    test if it reads the whole registry (the path images took before)."""
    monkeypatch.setattr(registry_view, "RESYNC_S", 60.0)
    with override_settings(
        REDIS_URL=own_redis.url, PADDLER_BUFFERED_REQUEST_TIMEOUT_MS=300
    ):
        replica = Dispatcher()

        async def no_registry_read() -> list[AgentRecord]:
            raise AssertionError("the whole registry was read")

        monkeypatch.setattr(replica, "agents", no_registry_read)
        follower = asyncio.create_task(replica.view.run())
        try:
            await until(replica.view.fresh, 10, "the view to sync")
            yield replica
        finally:
            follower.cancel()
            await asyncio.gather(follower, return_exceptions=True)
            await replica.redis.aclose()
            await replica.view.listener.aclose()


async def publish(
    dispatcher: Dispatcher, agent_id: str, *, serves_images: bool, busy: int = 0
) -> None:
    report: dict[str, Any] = {
        "id": agent_id,
        "name": agent_id,
        "pool": "default",
        "channel": f"channel-{agent_id}",
        "slots_total": 2,
        "slots_processing": busy,
        "slots": [{"busy": i < busy, "prefix": []} for i in range(2)],
        "seq": 1,
        "serves_images": serves_images,
    }
    await registry.publish_status(
        dispatcher.redis, agent_id=agent_id, report=report, changed=True, ttl_ms=TTL_MS
    )


def image_stream(dispatcher: Dispatcher, number: int) -> Stream:
    params: ConversationParams = {
        "conversation_history": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": PICTURE}},
                ],
            }
        ],
        "add_generation_prompt": True,
        "enable_thinking": False,
        "max_tokens": 1,
        "grammar": None,
        "tools": [],
    }
    return Stream(f"r{number}", "conversation", params, dispatcher)


async def test_a_request_with_images_is_placed_from_the_view_on_an_image_server(
    dispatcher: Dispatcher,
) -> None:
    # The text-only agent is the least busy: it would be chosen for text.
    await publish(dispatcher, "text", serves_images=False)
    await publish(dispatcher, "vision", serves_images=True, busy=1)
    await until(lambda: len(dispatcher.view.index) == 2, 5, "two agents")
    agent, decision = await dispatcher._claim(image_stream(dispatcher, 1), set())
    assert agent.id == "vision"
    assert decision.order == ["vision"]


async def test_a_full_image_server_makes_the_request_wait_not_go_to_text_only(
    dispatcher: Dispatcher,
) -> None:
    await publish(dispatcher, "text", serves_images=False)
    await publish(dispatcher, "vision", serves_images=True)
    await until(lambda: len(dispatcher.view.index) == 2, 5, "two agents")
    for number in (1, 2):
        agent, _ = await dispatcher._claim(image_stream(dispatcher, number), set())
        assert agent.id == "vision"
    # Both its slots are taken; the wider second try must not offer the
    # text-only agent's free ones: the request waits, and times out.
    with pytest.raises(InferenceFailure) as waited:
        await dispatcher._claim(image_stream(dispatcher, 3), set())
    assert waited.value.code == 504


async def test_ready_agents_none_serving_images_refuse_from_the_view(
    dispatcher: Dispatcher,
) -> None:
    await publish(dispatcher, "text", serves_images=False)
    await until(lambda: len(dispatcher.view.index) == 1, 5, "the agent")
    with pytest.raises(GenerationRefused) as refused:
        await dispatcher._claim(image_stream(dispatcher, 3), set())
    assert refused.value.code == 400
    assert refused.value.variant == "MultimodalNotSupported"
    assert refused.value.description == (
        "MultimodalNotSupported: the request holds images, and no agent serving "
        "this pool has a multimodal projection loaded"
    )
