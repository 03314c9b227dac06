"""An idle web process wakes only for what can happen: the registry view
drops lapsed agents at their deadline rather than on a fixed tick, and the
reaper sleeps while there is no stream to reap (``bench.token_path idle``
measures what these wake-ups cost).  Real Redis; the reaper's test runs a
real synthetic agent."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from django.test import override_settings

from balancer import background, keys, registry_view
from balancer.contract import RawPromptParams
from balancer.dispatch import Dispatcher
from tests.support.fleet import start_agent
from tests.support.redis_server import RedisServer
from tests.test_registry_view import following, publish, until


async def test_the_view_does_not_wake_to_expire_agents_that_keep_heartbeating(
    own_redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(registry_view, "RESYNC_S", 60.0)
    async with following(own_redis, ttl_ms=3_000) as (view, redis):
        expiries = 0
        expire = view.index.expire

        def counted(heard_before: float) -> list[str]:
            nonlocal expiries
            expiries += 1
            return expire(heard_before)

        view.index.expire = counted  # type: ignore[method-assign]
        for seq in range(1, 9):  # 1.6 s of heartbeats, well inside the TTL
            await publish(redis, "a", seq=seq)
            await asyncio.sleep(0.2)
        assert view.index.get("a") is not None
        # A fixed tick of 250 ms checked six times; nothing could lapse.
        assert expiries == 0


async def test_a_silent_agent_is_dropped_at_its_own_deadline_while_another_lives(
    own_redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(registry_view, "RESYNC_S", 60.0)
    async with following(own_redis, ttl_ms=600) as (view, redis):
        await publish(redis, "silent", seq=1)
        await until(lambda: view.index.get("silent") is not None, 5, "silent")
        heard = asyncio.get_running_loop().time()
        seq = 0
        # "b" arrives later and keeps heart-beating: the deadline the view
        # sleeps until is the silent one's, which never moves.
        while view.index.get("silent") is not None:
            seq += 1
            await publish(redis, "b", seq=seq)
            await asyncio.sleep(0.1)
            assert asyncio.get_running_loop().time() - heard < 3, "never dropped"
        dropped_after = asyncio.get_running_loop().time() - heard
        assert dropped_after >= 0.6
        assert view.index.get("b") is not None


async def test_the_reaper_wakes_for_a_placed_stream_and_cancels_it_unread(
    own_redis: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(background, "ABANDONED_S", 0.5)
    with override_settings(REDIS_URL=own_redis.url):
        dispatcher = Dispatcher()
        await dispatcher.redis.set(keys.desired_state(), json.dumps({"model": "None"}))
        agent = start_agent(
            own_redis.url,
            tmp_path,
            "reaped",
            1,
            "--backend",
            "synthetic",
            env={"PADDLER_SYNTHETIC_STEP_MS": "20"},
        )
        try:
            dispatcher._ensure_started()
            await until(lambda: len(dispatcher.view.index) == 1, 60, "the agent")
            # Long past the reaper's first second with nothing to reap.
            await asyncio.sleep(1.2)
            params: RawPromptParams = {
                "raw_prompt": "x",
                "max_tokens": 100_000,
                "grammar": None,
            }
            stream = await dispatcher.open_stream("raw_prompt", params)
            # Nobody reads it: the reaper ends it and frees its slot.
            deadline = asyncio.get_running_loop().time() + 10
            while True:
                item = await asyncio.wait_for(stream.queue.get(), 10)
                if item.get("error"):
                    break
                assert asyncio.get_running_loop().time() < deadline
            error = item["error"]
            assert error is not None and error["code"] == 408
            assert stream.request_id not in dispatcher.streams
            claims = keys.agent_claims(stream.agent_id)
            assert await dispatcher.redis.zcard(claims) == 0
        finally:
            await asyncio.to_thread(agent.stop)
            for task in dispatcher._tasks:
                task.cancel()
            await asyncio.gather(*dispatcher._tasks, return_exceptions=True)
            await dispatcher.redis.aclose()
            await dispatcher.view.listener.aclose()
