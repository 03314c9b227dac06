"""One request's stream (``balancer.stream.Stream``) in-process: a reader
cancelled as its client goes away still stops the request and frees its slot.
"""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from balancer import keys, registry
from balancer.contract import RawPromptParams
from balancer.dispatch import Dispatcher
from balancer.registry_view import RegistryView
from balancer.stream import Stream
from tests.support.processes import stop_process
from tests.support.redis_server import start_redis

PROMPT: RawPromptParams = {"raw_prompt": "Hi", "max_tokens": 1, "grammar": None}


class _FinishRecorder:
    """The dispatcher as a stream sees it when it closes: ``finish`` only."""

    def __init__(self) -> None:
        self.finished: list[str] = []

    async def finish(self, stream: Stream) -> None:
        self.finished.append(stream.request_id)


async def test_a_reader_cancelled_as_a_token_arrives_stops_and_frees_the_slot() -> None:
    # The cancellation Django sends when the client disconnects can come in
    # the same turn of the loop as the next token.  It must still end the
    # reader (and with it the request); a reader that swallowed it would
    # relay the whole generation to nobody, its slot held to the end.
    dispatcher = _FinishRecorder()
    stream = Stream("r1", "raw_prompt", PROMPT, dispatcher)  # type: ignore[arg-type]

    async def read() -> None:
        async for _batch in stream.batches():
            pass

    reader = asyncio.create_task(read())
    await asyncio.sleep(0)  # the reader waits for the queue
    stream.queue.put_nowait(
        {
            "request_id": "r1",
            "response": {"GeneratedToken": {"ContentToken": " and"}},
            "error": None,
            "final": False,
            "meta": None,
        }
    )
    await asyncio.sleep(0)  # the queue hands the item over...
    reader.cancel()  # ...and the client goes away in the same turn
    done, _ = await asyncio.wait({reader}, timeout=2)
    assert reader in done and reader.cancelled()
    assert dispatcher.finished == ["r1"]


async def test_a_reader_cancelled_while_freeing_its_slot_still_frees_it() -> None:
    # A client that hangs up as its last token arrives: Django cancels the
    # reader while the stream's clean-up waits on Redis to free the claim.
    # The claim must still go; cut short, it would hold the slot until its
    # lease ran out, with the stream already gone from the dispatcher.
    server = start_redis()
    redis = aioredis.Redis.from_url(server.url)
    try:
        dispatcher = object.__new__(Dispatcher)  # only what finish() uses
        dispatcher.redis = redis
        dispatcher.streams = {}
        dispatcher._cleanups = set()
        dispatcher._slot_freed = asyncio.Event()
        dispatcher._statsd = None
        # Freeing a claim also tells the registry view (the process's count).
        dispatcher.view = RegistryView(redis, redis, ttl_ms=3_000)
        stream = Stream(
            "r2", "raw_prompt", PROMPT, dispatcher, agent_id="agent-x", agent_name="x"
        )
        stream.finished = True
        dispatcher.streams["r2"] = stream
        claims = keys.agent_claims("agent-x")
        # Claimed from another connection: the dispatcher's client has none
        # yet, so freeing the claim first waits to connect.
        setup = aioredis.Redis.from_url(server.url)
        await setup.zadd(claims, {"r2": registry.now_ms() + 15_000})
        closing = asyncio.create_task(stream.close())
        await asyncio.sleep(0)  # the clean-up now waits on Redis
        closing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await closing
        for _ in range(100):
            if await setup.zcard(claims) == 0:
                break
            await asyncio.sleep(0.02)
        assert await setup.zcard(claims) == 0, "the claim outlived its stream"
        await setup.aclose()
    finally:
        await redis.aclose()
        stop_process(server.process)
