"""The agent's relay writes each push without waiting for Redis's reply and
reads it before the next push (agents.push_connection): against a real
redis-server, nothing it owes is left unread, and a push Redis refused, or
whose connection died before the reply, still stops its requests."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis
import redis.asyncio
from django.test import override_settings

from agents.jobs import Generation, Output
from agents.worker import AgentWorker
from balancer.contract import OutputItem, content_token_item, done_item
from balancer.events import expand_item
from tests.support.constants import GREEDY_PARAMETERS
from tests.support.processes import wait_until
from tests.support.redis_server import RedisServer

INBOX = "paddler:test:relay-inbox"


@pytest.fixture
def admin(own_redis: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(own_redis.url)
    yield client
    client.close()


@pytest.fixture
async def worker(own_redis: RedisServer) -> AsyncIterator[AgentWorker]:
    """A worker whose relay pushes to ``own_redis``; no engine until a test
    applies a state."""
    with override_settings(REDIS_URL=own_redis.url):
        built = AgentWorker(name="relay", slots=1, backend="synthetic")
        built._loop = asyncio.get_running_loop()
        built._redis = redis.asyncio.Redis.from_url(own_redis.url)
        built._open_pushes()
        yield built
        await built._stop_engine()
        await built.disconnect()


def token(request_id: str, text: str) -> Output:
    return Output(INBOX, content_token_item(request_id, text))


def inbox_items(client: redis.Redis) -> list[OutputItem]:
    return [
        item
        for raw in client.lrange(INBOX, 0, -1)
        for item in map(expand_item, json.loads(raw)["items"])
    ]


def command_calls(client: redis.Redis, command: str) -> int:
    stats: dict[str, Any] = client.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


def replies_owed(worker: AgentWorker) -> int:
    assert worker._pushes is not None
    return worker._pushes.owed + (worker._unsettled is not None)


@contextlib.asynccontextmanager
async def relay_running(worker: AgentWorker) -> AsyncIterator[None]:
    """The relay thread, for the block; ended (its replies read) after it."""
    relay = asyncio.create_task(worker.output_loop())
    try:
        yield
    finally:
        worker._outputs.put(None)
        await asyncio.wait_for(relay, 10)


async def test_a_push_goes_out_without_waiting_for_the_reply(
    worker: AgentWorker, admin: redis.Redis
) -> None:
    # Redis holds writes back for 2 s: a push that waited for its reply
    # would take that long.
    admin.client_pause(2000, all=False)
    started = time.monotonic()
    await asyncio.to_thread(worker._push, [token("r", " t0")])
    assert time.monotonic() - started < 1.0
    assert replies_owed(worker) > 0
    admin.client_unpause()
    await asyncio.to_thread(worker._push, [token("r", " t1")], settle=True)
    assert replies_owed(worker) == 0
    assert [item["response"] for item in inbox_items(admin)] == [
        {"GeneratedToken": {"ContentToken": " t0"}},
        {"GeneratedToken": {"ContentToken": " t1"}},
    ]
    assert worker._undelivered == {}


async def test_many_queued_steps_arrive_in_order_and_every_reply_is_read(
    worker: AgentWorker, admin: redis.Redis
) -> None:
    admin.config_resetstat()
    relay = asyncio.create_task(worker.output_loop())
    steps = 3000
    for number in range(steps):
        worker._outputs.put([token("r", f" t{number}")])
        if number % 500 == 0:
            await asyncio.sleep(0.01)  # some pushes alone, most together
    worker._outputs.put([Output(INBOX, done_item("r", {"prompt_tokens": 1}))])
    worker._outputs.put(None)
    await asyncio.wait_for(relay, 30)
    # The relay ended with nothing owed: Redis answered every push.
    assert replies_owed(worker) == 0
    assert worker._undelivered == {}
    items = inbox_items(admin)
    assert [item["response"] for item in items[:-1]] == [
        {"GeneratedToken": {"ContentToken": f" t{n}"}} for n in range(steps)
    ]
    assert items[-1]["final"]
    assert command_calls(admin, "rpush") == admin.llen(INBOX)


async def test_a_refused_push_loses_its_request_when_the_relay_goes_idle(
    worker: AgentWorker, admin: redis.Redis
) -> None:
    # The inbox is no list: Redis answers RPUSH with WRONGTYPE.  No push
    # follows; the relay reads the reply once idle.
    admin.set(INBOX, "not a list")
    async with relay_running(worker):
        worker._outputs.put([token("idle", " t0")])
        await asyncio.to_thread(
            wait_until, lambda: "idle" in worker._undelivered, 2, "the loss"
        )
        assert replies_owed(worker) == 0


async def test_a_refused_push_stops_its_running_request_and_it_ends_with_502(
    worker: AgentWorker, admin: redis.Redis
) -> None:
    await worker.apply_state(
        {"model": "None", "inference_parameters": dict(GREEDY_PARAMETERS)}
    )
    engine = worker.engine
    assert engine is not None
    async with relay_running(worker):
        engine.submit(
            Generation(request_id="endless", max_tokens=10**9, destination=INBOX)
        )
        await asyncio.to_thread(
            wait_until, lambda: admin.llen(INBOX) > 0, 10, "first output"
        )
        admin.delete(INBOX)
        admin.set(INBOX, "not a list")
        await asyncio.to_thread(
            wait_until, lambda: "endless" in worker._undelivered, 10, "the loss"
        )
        # The engine was told to stop the request: its slot is free.
        await asyncio.to_thread(
            wait_until, lambda: engine.slots_processing == 0, 10, "slot freed"
        )
        admin.delete(INBOX)
        await worker._deliver_lost()
        assert worker._undelivered == {}
        (item,) = inbox_items(admin)
        assert item["request_id"] == "endless"
        assert item["error"] == {
            "code": 502,
            "description": "Output was lost while Redis was unreachable",
        }


async def test_a_connection_killed_before_the_reply_loses_that_push_and_reconnects(
    worker: AgentWorker, admin: redis.Redis
) -> None:
    await asyncio.to_thread(worker._push, [token("b", " b0")], settle=True)
    # Redis holds the next push back; the connection dies before it is
    # taken, its reply owed.
    admin.client_pause(5000, all=False)
    await asyncio.to_thread(worker._push, [token("a", " a0")])
    assert replies_owed(worker) > 0
    assert admin.client_kill_filter(_type="normal") == 1
    admin.client_unpause()
    # The next push reads that reply first (the connection is gone: "a" is
    # lost), then goes out on a new connection with "a"'s error.
    await asyncio.to_thread(worker._push, [token("b", " b1")], settle=True)
    assert worker._undelivered == {}
    items = inbox_items(admin)
    assert [item["response"] for item in items if item["request_id"] == "b"] == [
        {"GeneratedToken": {"ContentToken": " b0"}},
        {"GeneratedToken": {"ContentToken": " b1"}},
    ]
    (lost,) = [item for item in items if item["request_id"] == "a"]
    assert lost["error"] is not None and lost["error"]["code"] == 502


async def test_the_last_reply_is_read_before_the_relay_ends(
    worker: AgentWorker, admin: redis.Redis
) -> None:
    # Pushed last, just before the sentinel: Redis's refusal is still read.
    admin.set(INBOX, "not a list")
    worker._outputs.put([token("last", " t0")])
    worker._outputs.put(None)
    await asyncio.wait_for(worker.output_loop(), 10)
    assert "last" in worker._undelivered
    assert replies_owed(worker) == 0


async def test_output_still_queued_for_a_request_told_lost_is_dropped(
    worker: AgentWorker, admin: redis.Redis
) -> None:
    # The engine stops a lost request at its next step; what it made until
    # then reaches the relay after the request's error went out.
    worker._undelivered["gone"] = INBOX
    await worker._deliver_lost()
    assert worker._undelivered == {}
    await asyncio.to_thread(
        worker._push, [token("gone", " late"), token("other", " t0")], settle=True
    )
    assert [
        (item["request_id"], item["error"] is None) for item in inbox_items(admin)
    ] == [
        ("gone", False),
        ("other", True),
    ]
