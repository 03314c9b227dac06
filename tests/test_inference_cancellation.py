"""A client that goes away cancels its request on the agent and frees the slot.

Both slots of the test agent are kept busy with long generations; one client
then disconnects.  Its slot claim must go within a second, and a new request
is served only if the agent really stopped the abandoned generation (it would
otherwise go on for minutes while the new request waits for a slot).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from balancer import keys, registry
from balancer.contract import RawPromptParams
from balancer.dispatch import Dispatcher
from balancer.stream import Stream
from tests.support.constants import ENDLESS_PROMPT
from tests.support.processes import stop_process
from tests.support.redis_server import RedisServer, start_redis
from tests.support.slots import (
    FIRST_TOKEN_BUDGET_S,
    REPORT_LAG_S,
    claimed_slots,
    seconds_to_first_token,
    wait_for_claims,
    wait_for_idle_slots,
)
from tests.support.web import WebServer

PROMPT: RawPromptParams = {"raw_prompt": "Hi", "max_tokens": 1, "grammar": None}


@contextmanager
def long_stream(
    web: WebServer, path: str, body: dict[str, Any]
) -> Iterator[Iterator[str]]:
    """A long streaming request; leaving the block drops the connection."""
    # A client of its own: closing it closes the TCP connection for sure.
    with (
        httpx.Client(timeout=60) as client,
        client.stream("POST", f"{web.url}{path}", json=body) as response,
    ):
        assert response.status_code == 200, response.read()
        yield response.iter_lines()


def ndjson_body(index: int) -> dict[str, Any]:
    return {"raw_prompt": f"{ENDLESS_PROMPT} {index}", "max_tokens": 2000}


def openai_body(index: int) -> dict[str, Any]:
    return {
        "model": "any",
        "prompt": f"{ENDLESS_PROMPT} {index}",
        "max_tokens": 2000,
        "stream": True,
    }


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/v1/continue_from_raw_prompt", ndjson_body),
        ("/v1/completions", openai_body),
    ],
)
def test_http_disconnect_frees_the_slot_within_a_second(
    api_platform: WebServer, api_redis: RedisServer, path: str, body: Any
) -> None:
    with long_stream(api_platform, path, body(1)) as other:
        next(other)
        with long_stream(api_platform, path, body(2)) as lines:
            next(lines)
            next(lines)
            assert claimed_slots(api_redis) == 2
        wait_for_claims(api_redis, 1, timeout=1.0)
        # The only free slot is the one the dropped request held.
        assert seconds_to_first_token(api_platform) < FIRST_TOKEN_BUDGET_S
    wait_for_claims(api_redis, 0, timeout=1.0)
    wait_for_idle_slots(api_platform, REPORT_LAG_S)


def test_non_streaming_client_that_gives_up_frees_the_slot(
    api_platform: WebServer, api_redis: RedisServer
) -> None:
    with long_stream(
        api_platform, "/api/v1/continue_from_raw_prompt", ndjson_body(1)
    ) as other:
        next(other)
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(
                f"{api_platform.url}/v1/completions",
                json={**openai_body(2), "stream": False},
                timeout=1.5,
            )
        wait_for_claims(api_redis, 1, timeout=1.0)
        assert seconds_to_first_token(api_platform) < FIRST_TOKEN_BUDGET_S
    wait_for_idle_slots(api_platform, REPORT_LAG_S)


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
