"""Finished requests' records and counters, written in batches: many
requests ending at once cost Redis one write, and read back as if each had
been written alone."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from django.test import override_settings

from balancer import keys
from balancer.contract import RawPromptParams
from balancer.dispatch import Dispatcher
from balancer.metrics.counters import (
    BUCKETS_MS,
    count_request,
    count_requests,
    read_counters,
    store_requests,
)
from balancer.request_log import RequestRecord, write_many
from balancer.stream import Stream
from tests.support.processes import stop_process
from tests.support.redis_server import start_redis

PROMPT: RawPromptParams = {"raw_prompt": "Hi", "max_tokens": 1, "grammar": None}


@pytest.fixture
async def redis() -> AsyncIterator[aioredis.Redis]:
    """A Redis of its own: the counters and the log are global keys."""
    server = start_redis()
    client = aioredis.Redis.from_url(server.url)
    try:
        yield client
    finally:
        await client.aclose()
        stop_process(server.process)


def record(number: int, *, duration_ms: float, outcome: str = "done") -> RequestRecord:
    return {
        "id": f"r{number}",
        "parent_id": None,
        "kind": "raw_prompt",
        "pool": "default",
        "agent_id": "a",
        "agent": "a",
        "slot": 0,
        "matched_prefix_blocks": 0,
        "why": "least busy",
        "retried": False,
        "prompt_tokens": 10 + number,
        "cached_prompt_tokens": number,
        "generated_tokens": 5,
        "queue_wait_ms": 0.5,
        "time_to_first_token_ms": None if number % 3 == 0 else 12.0 * number,
        "tokens_per_second": None,
        "duration_ms": duration_ms,
        "outcome": outcome,
        "finished_at": 0.0,
    }


RECORDS = [
    record(n, duration_ms=d, outcome="done" if n % 4 else "500")
    for n, d in enumerate([3, 7, 7, 30, 260, 999, 1000, 45_000, 0.1, 5])
]


async def test_counters_of_a_batch_read_as_those_written_one_by_one(
    redis: aioredis.Redis,
) -> None:
    for one in RECORDS:
        async with redis.pipeline(transaction=False) as pipe:
            count_request(pipe, one)
            await pipe.execute()
    alone = await read_counters(redis)
    await redis.delete(keys.metrics_counters())

    async with redis.pipeline(transaction=False) as pipe:
        count_requests(pipe, RECORDS)
        await pipe.execute()

    assert await read_counters(redis) == alone
    duration = alone.histograms["duration"]
    # Cumulative, as Prometheus reads them: 3, 5 and 0.1 ms are <= 5.
    assert dict(duration.buckets)["5"] == 3
    assert dict(duration.buckets)["1000"] == 9
    assert dict(duration.buckets)["+Inf"] == len(RECORDS)
    assert alone.requests == {("raw_prompt", "done"): 7, ("raw_prompt", "500"): 3}


async def test_cumulative_buckets_written_before_still_add_up(
    redis: aioredis.Redis,
) -> None:
    # A request of 7 ms counted the way counters were written before: in
    # every bucket at or above its value.
    for bound in [*(b for b in BUCKETS_MS if b >= 7), "+Inf"]:
        await redis.hset(keys.metrics_counters(), f"bucket|duration|{bound}", 1)
    async with redis.pipeline(transaction=False) as pipe:
        count_requests(pipe, [record(1, duration_ms=30)])
        await pipe.execute()

    buckets = dict((await read_counters(redis)).histograms["duration"].buckets)

    assert (buckets["5"], buckets["10"], buckets["25"], buckets["50"]) == (0, 1, 1, 2)
    assert buckets["+Inf"] == 2


async def test_requests_ending_together_are_recorded_in_few_writes(
    redis: aioredis.Redis,
) -> None:
    dispatcher = object.__new__(Dispatcher)  # only what _log uses
    dispatcher.redis = redis
    dispatcher._statsd = None
    dispatcher._records = []
    dispatcher._records_writer = None
    streams = [
        Stream(f"r{n}", "raw_prompt", PROMPT, dispatcher, agent_id="a")
        for n in range(50)
    ]
    before = (await redis.info("commandstats")).get("cmdstat_lpush", {"calls": 0})

    with override_settings(PADDLER_REQUEST_LOG_SIZE=1000):
        await asyncio.gather(*(dispatcher._log(stream) for stream in streams))

    pushes = (await redis.info("commandstats"))["cmdstat_lpush"]["calls"]
    assert pushes - before["calls"] < 10
    stored = await redis.lrange(keys.request_log(), 0, -1)
    ids = [json.loads(raw)["id"] for raw in stored]
    # Newest first, as when each was pushed alone.
    assert ids == [f"r{n}" for n in reversed(range(50))]
    counters = await read_counters(redis)
    assert counters.requests == {("raw_prompt", "cancelled"): 50}


async def test_one_command_stores_what_the_pipeline_did(
    redis: aioredis.Redis,
) -> None:
    """``store_requests`` (the dispatcher's one script) writes the counters
    and the log as ``count_requests`` and ``request_log.write_many`` do."""
    async with redis.pipeline(transaction=False) as pipe:
        count_requests(pipe, RECORDS)
        write_many(pipe, RECORDS, size=7)
        await pipe.execute()
    counters = await read_counters(redis)
    log = await redis.lrange(keys.request_log(), 0, -1)
    await redis.delete(keys.metrics_counters(), keys.request_log())
    calls = (await redis.info("commandstats")).get("cmdstat_eval", {"calls": 0})

    await store_requests(redis, RECORDS, log_size=7)

    assert await read_counters(redis) == counters
    assert await redis.lrange(keys.request_log(), 0, -1) == log
    assert len(log) == 7
    eval_calls = (await redis.info("commandstats"))["cmdstat_eval"]["calls"]
    assert eval_calls - calls["calls"] == 1
    # A log of size 0 keeps nothing; the counters still count.
    await store_requests(redis, RECORDS[:1], log_size=0)
    assert await redis.llen(keys.request_log()) == 7
