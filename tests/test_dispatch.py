"""The dispatcher of one web process, in-process against a real Redis."""

from __future__ import annotations

import asyncio
import contextvars
import json

import redis.asyncio as aioredis
from django.test import override_settings

from balancer import background
from balancer.contract import RawPromptParams
from balancer.dispatch import Dispatcher
from balancer.events import OutputBatch, compact_item
from balancer.stream import Stream
from tests.support.redis_server import RedisServer

PROMPT: RawPromptParams = {"raw_prompt": "Hi", "max_tokens": 1, "grammar": None}


def token_batch(agent_id: str, request_id: str, text: str) -> str:
    batch: OutputBatch = {
        "agent_id": agent_id,
        "agent_name": agent_id,
        "items": [
            compact_item(
                {
                    "request_id": request_id,
                    "response": {"GeneratedToken": {"ContentToken": text}},
                    "error": None,
                    "final": False,
                    "meta": None,
                }
            )
        ],
    }
    return json.dumps(batch)


async def test_a_moved_request_takes_output_only_from_its_new_agent(
    redis_server: RedisServer,
) -> None:
    # The request went to agent "first", which went silent before any output,
    # so it moved to "second".  If "first" lives on, its tokens still reach
    # this process's inbox under the same request id: the stream must not
    # take them, or the client gets two generations interleaved.
    dispatcher = object.__new__(Dispatcher)  # only what the inbox reader uses
    dispatcher.inbox = "paddler:test:inbox"
    dispatcher.streams = {}
    stream = Stream("r1", "raw_prompt", PROMPT, dispatcher, agent_id="second")
    dispatcher.streams["r1"] = stream
    redis = aioredis.Redis.from_url(redis_server.url)
    with override_settings(REDIS_URL=redis_server.url):
        reader = asyncio.create_task(
            background.read_inbox(dispatcher), context=contextvars.Context()
        )
        await asyncio.sleep(0)  # the reader connects with the setting above
    try:
        await redis.rpush(dispatcher.inbox, token_batch("first", "r1", "stale"))
        await redis.rpush(dispatcher.inbox, token_batch("second", "r1", "fresh"))
        item = await asyncio.wait_for(stream.queue.get(), timeout=5)
        assert item["response"] == {"GeneratedToken": {"ContentToken": "fresh"}}
        await asyncio.sleep(0.2)
        assert stream.queue.empty()
    finally:
        reader.cancel()
        await redis.aclose()
