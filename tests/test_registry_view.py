"""The registry view (``balancer.registry_view``): each web process's copy of
the registry, kept current by the agents' notifications, on a real Redis."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from django.test import override_settings

from balancer import dispatch, keys, registry, registry_view
from balancer.contract import RawPromptParams
from balancer.dispatch import Dispatcher
from balancer.registry_view import RegistryView
from balancer.stream import InferenceFailure, Stream
from tests.support.fleet import start_agent
from tests.support.redis_server import RedisServer

TTL_MS = 3_000


def report(agent_id: str, *, seq: int, processing: int = 0, slots: int = 2) -> Any:
    return {
        "id": agent_id,
        "name": agent_id,
        "pool": "default",
        "channel": f"channel-{agent_id}",
        "slots_total": slots,
        "slots_processing": processing,
        "slots": [{"busy": i < processing, "prefix": []} for i in range(slots)],
        "seq": seq,
    }


async def until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def following(
    server: RedisServer, *, ttl_ms: int = TTL_MS
) -> AsyncIterator[tuple[RegistryView, aioredis.Redis]]:
    """A view following ``server``, and a client to play the agents with."""
    redis = aioredis.Redis.from_url(server.url)
    listener = aioredis.Redis.from_url(server.url)
    view = RegistryView(redis, listener, ttl_ms=ttl_ms)
    task = asyncio.create_task(view.run())
    try:
        await until(view.fresh, 10, "the view to sync")
        yield view, redis
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await redis.aclose()
        await listener.aclose()


async def publish(
    redis: aioredis.Redis, agent_id: str, *, seq: int, changed: bool = True, **kw: Any
) -> None:
    await registry.publish_status(
        redis,
        agent_id=agent_id,
        report=report(agent_id, seq=seq, **kw),
        changed=changed,
        ttl_ms=TTL_MS,
    )


async def test_notifications_keep_the_view_current_without_reading_the_registry(
    own_redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(registry_view, "RESYNC_S", 60.0)
    async with following(own_redis) as (view, redis):
        await publish(redis, "a", seq=1)
        await until(lambda: view.index.get("a") is not None, 5, "agent a")
        await publish(redis, "a", seq=2, processing=2)
        await until(lambda: view.index.busy("a") == 2, 5, "a's busy slots")
        async with redis.pipeline(transaction=True) as pipe:
            registry.announce_gone(pipe, "a")
            await pipe.execute()
        await until(lambda: view.index.get("a") is None, 5, "a gone")
        # All of it came by notification: one full read, at the start.
        assert view.resyncs == 1
        assert view.read_back == 0


async def test_a_missed_report_is_read_back_at_the_next_heartbeat(
    own_redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(registry_view, "RESYNC_S", 60.0)
    async with following(own_redis) as (view, redis):
        await publish(redis, "a", seq=1)
        await until(lambda: view.index.get("a") is not None, 5, "agent a")
        # Report 2 reaches Redis but its notification is lost...
        await redis.set(
            keys.agent_status("a"), json.dumps(report("a", seq=2, processing=1))
        )
        await asyncio.sleep(0.1)
        assert view.index.busy("a") == 0
        # ...and the next heartbeat says "unchanged since 2": the view reads it.
        await publish(redis, "a", seq=2, processing=1, changed=False)
        await until(lambda: view.index.busy("a") == 1, 5, "report 2")
        assert view.read_back == 1
        assert view.index.seq("a") == 2


async def test_registrations_and_departures_it_missed_are_healed_by_the_resync(
    own_redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(registry_view, "RESYNC_S", 0.3)
    async with following(own_redis) as (view, redis):
        # Written as an agent does, but with no notification at all.
        await redis.set(keys.agent_status("b"), json.dumps(report("b", seq=1)))
        await redis.sadd(keys.agents_set(), "b")
        await until(lambda: view.index.get("b") is not None, 5, "b by resync")
        await redis.delete(keys.agent_status("b"))
        await until(lambda: view.index.get("b") is None, 5, "b dropped by resync")


async def test_an_agent_not_heard_from_within_its_ttl_is_dropped(
    own_redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(registry_view, "RESYNC_S", 60.0)
    async with following(own_redis, ttl_ms=500) as (view, redis):
        await publish(redis, "a", seq=1)
        await until(lambda: view.index.get("a") is not None, 5, "agent a")
        # No heartbeat and no "gone" (a killed agent, a lost notification).
        await until(lambda: view.index.get("a") is None, 5, "a to expire")
        assert view.resyncs == 1


async def test_a_real_agent_appears_in_the_view_and_leaves_it_when_stopped(
    own_redis: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(registry_view, "RESYNC_S", 60.0)
    async with following(own_redis) as (view, redis):
        await redis.set(keys.desired_state(), json.dumps({"model": "None"}))
        agent = start_agent(
            own_redis.url, tmp_path, "real", 3, "--backend", "synthetic"
        )
        try:

            def ready() -> bool:
                found = [r for r in view.index.records() if r.name == "real"]
                return bool(found) and found[0].slots_total == 3

            await until(ready, 60, "the agent in the view")
            (record,) = view.index.records()
            assert view.index.decide("default", []).order == [record.id]
            await asyncio.to_thread(agent.stop)
            # Its "gone" comes at once: well before its TTL would lapse.
            await until(lambda: len(view.index) == 0, 2, "the agent to leave")
        finally:
            agent.stop()


def prompt_stream(dispatcher: Dispatcher, number: int) -> Stream:
    params: RawPromptParams = {"raw_prompt": "x", "max_tokens": 1, "grammar": None}
    return Stream(f"r{number}", "raw_prompt", params, dispatcher)


async def test_claims_from_two_views_never_double_book_a_slot(
    own_redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two web processes place 100 requests at once on 20 agents of 2 slots.
    # Neither view sees the other's claims (the agents never report them
    # here), and each offers the claim one agent at a time, so most claims
    # go through the wider second try.  Exactly 40 must hold a slot, two
    # per agent, and the rest wait and time out: none over-commits.
    monkeypatch.setattr(registry_view, "RESYNC_S", 60.0)
    monkeypatch.setattr(dispatch, "CLAIM_CANDIDATES", 1)
    with override_settings(
        REDIS_URL=own_redis.url,
        PADDLER_MAX_BUFFERED_REQUESTS=100,
        PADDLER_BUFFERED_REQUEST_TIMEOUT_MS=500,
    ):
        await place_on_two_replicas()


async def place_on_two_replicas() -> None:
    agents = [f"agent-{n:02}" for n in range(20)]
    replicas = [Dispatcher(), Dispatcher()]
    followers = [asyncio.create_task(d.view.run()) for d in replicas]
    try:
        for agent_id in agents:
            await publish(replicas[0].redis, agent_id, seq=1)
        await until(
            lambda: all(len(r.view.index) == 20 for r in replicas), 10, "20 agents"
        )

        async def place(number: int) -> str | None:
            replica = replicas[number % 2]
            try:
                agent, _ = await replica._claim(prompt_stream(replica, number), set())
            except InferenceFailure as failure:
                assert failure.code == 504
                return None
            return agent.id

        placed = await asyncio.gather(*(place(n) for n in range(100)))
        claimed = [agent_id for agent_id in placed if agent_id is not None]
        assert len(claimed) == 40
        assert sorted(claimed) == sorted(agents * 2)
        redis = replicas[0].redis
        for agent_id in agents:
            assert await redis.zcard(keys.agent_claims(agent_id)) == 2
        # Each process counts its own claims in its view: 40 in all.
        assert sum(r.view.index.busy(a) for r in replicas for a in agents) == 40
    finally:
        for task in followers:
            task.cancel()
        await asyncio.gather(*followers, return_exceptions=True)
        for replica in replicas:
            await replica.redis.aclose()
            await replica.view.listener.aclose()
