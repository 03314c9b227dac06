"""Redis Sentinel: the settings, the clients that follow it, and a failover
under load, with a real master, replica and sentinel on loopback."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings
from redis.asyncio.sentinel import SentinelConnectionPool as AsyncSentinelPool
from redis.sentinel import SentinelConnectionPool

from balancer import keys, redis_connection
from paddler_project.env import env_sentinels, redis_master_options
from tests.support.constants import ENDLESS_PROMPT, ROOT
from tests.support.fleet import start_agent
from tests.support.processes import wait_until
from tests.support.sentinel import MASTER_NAME, SentinelSet, start_sentinel_set
from tests.support.slots import wait_for_claims
from tests.support.web import start_web

# Longest any one request may take before the test calls it a hang.
WATCHDOG_S = 60.0


def test_sentinel_addresses_are_read_with_the_default_port(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SENTINELS", "s1:26380, s2 ,[::1]:26381")
    assert env_sentinels("SENTINELS") == [
        ("s1", 26380),
        ("s2", 26379),
        ("::1", 26381),
    ]
    monkeypatch.setenv("SENTINELS", "")
    assert env_sentinels("SENTINELS") == []


def test_the_masters_database_and_credentials_come_from_redis_url() -> None:
    assert redis_master_options("redis://:s%40cret@ignored:1/3") == {
        "db": 3,
        "password": "s@cret",
    }
    assert redis_master_options("redis://user:pw@ignored") == {
        "username": "user",
        "password": "pw",
    }
    with pytest.raises(ImproperlyConfigured, match="database number"):
        redis_master_options("redis://ignored/zero")


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ({"PADDLER_REDIS_SENTINELS": "sentinel:notaport"}, "PADDLER_REDIS_SENTINELS"),
        ({"PADDLER_REDIS_SENTINELS": "sentinel:70000"}, "PADDLER_REDIS_SENTINELS"),
        (
            {
                "PADDLER_REDIS_SENTINELS": "sentinel",
                "PADDLER_REDIS_SENTINEL_MASTER": "",
            },
            "PADDLER_REDIS_SENTINEL_MASTER",
        ),
        (
            {"PADDLER_REDIS_SENTINELS": "sentinel", "REDIS_URL": "redis://x/zero"},
            "REDIS_URL",
        ),
    ],
)
def test_a_bad_sentinel_setting_stops_the_start_naming_it(
    extra: dict[str, str], named: str
) -> None:
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        check=False,
        cwd=ROOT,
        env={**os.environ, **extra},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert named in result.stderr


@pytest.fixture
def sentinel_set(tmp_path: Path) -> Iterator[SentinelSet]:
    found = start_sentinel_set(tmp_path)
    yield found
    found.stop()


async def test_every_client_finds_the_master_through_the_sentinel(
    sentinel_set: SentinelSet,
) -> None:
    sentinels = [("127.0.0.1", sentinel_set.sentinel_port)]
    with override_settings(
        PADDLER_REDIS_SENTINELS=sentinels,
        PADDLER_REDIS_SENTINEL_MASTER=MASTER_NAME,
        REDIS_MASTER_OPTIONS={"db": 0},
    ):
        # REDIS_URL names a port nothing listens on: only the sentinel counts.
        sync = redis_connection.sync_client("redis://127.0.0.1:1/0")
        asynchronous = redis_connection.async_client()
    assert isinstance(sync.connection_pool, SentinelConnectionPool)
    assert isinstance(asynchronous.connection_pool, AsyncSentinelPool)
    sync.set("written-through", "sync")
    await asynchronous.set("written-through-async", "async")
    master = redis.Redis(port=sentinel_set.master.port)
    assert master.get("written-through") == b"sync"
    assert master.get("written-through-async") == b"async"
    sync.close()
    await asynchronous.aclose()
    master.close()


async def ndjson_stream(url: str, prompt: str, tokens: int) -> str:
    """How one NDJSON stream ended: done (with every token), an error code
    from its last line, a status, or cut."""
    received = 0
    last: dict[str, Any] = {}
    try:
        async with (
            httpx.AsyncClient(timeout=WATCHDOG_S) as http,
            http.stream(
                "POST",
                f"{url}/api/v1/continue_from_raw_prompt",
                json={"raw_prompt": prompt, "max_tokens": tokens},
            ) as response,
        ):
            if response.status_code != 200:
                return f"status {response.status_code}"
            async for line in response.aiter_lines():
                last = json.loads(line)
                output = last.get("Response", {}).get("response", {})
                if "ContentToken" in output.get("GeneratedToken", {}):
                    received += 1
    except (httpx.ReadError, httpx.RemoteProtocolError):
        return "cut"
    if "Error" in last:
        return str(last["Error"]["error"]["code"])
    done = last["Response"]["response"]["GeneratedToken"]["Done"]
    generated = done["usage"]["content_tokens"]
    return "done" if generated == received else f"done, {generated - received} lost"


async def watched(request: Coroutine[Any, Any, str]) -> str:
    try:
        return await asyncio.wait_for(request, WATCHDOG_S)
    except TimeoutError:
        return "hang"


def test_a_failover_ends_running_requests_with_an_error_and_new_ones_are_served(
    sentinel_set: SentinelSet, tmp_path: Path, greedy_state: dict[str, Any]
) -> None:
    """The master is killed while two requests stream.  The sentinel promotes
    the replica; each running request ends with an error line (never a
    hang, never a stream that goes on with a hole in it), and the web tier
    and the agent, which found Redis through the sentinel, serve new
    requests from the new master."""
    env = {**sentinel_set.env(), "PADDLER_INFERENCE_ITEM_TIMEOUT_MS": "20000"}
    # REDIS_URL gives only the database: its port is the old master's, which
    # dies, so a client that used it instead of the sentinel would fail.
    url = sentinel_set.master.url
    web = start_web(url, tmp_path, **env)
    agent = start_agent(url, tmp_path, "survivor", 2, "--threads", "1", env=env)
    figures: dict[str, float] = {}
    try:
        web.put_desired_state(greedy_state)
        web.wait_for_ready_agents(1)

        async def first_success() -> str:
            while True:
                if await ndjson_stream(web.url, "Hello again", 2) == "done":
                    return "done"
                await asyncio.sleep(0.3)

        async def run() -> dict[str, str]:
            running = {
                name: asyncio.create_task(
                    watched(ndjson_stream(web.url, f"{ENDLESS_PROMPT} {name}", 2000))
                )
                for name in ("a", "b")
            }
            await asyncio.to_thread(wait_for_claims, sentinel_set.master, 2, 60)
            await asyncio.sleep(1.0)  # both are generating
            sentinel_set.master.process.send_signal(signal.SIGKILL)
            sentinel_set.master.process.wait()
            killed = time.monotonic()
            ended = dict(
                zip(running, await asyncio.gather(*running.values()), strict=True)
            )
            figures["running_ended_s"] = time.monotonic() - killed
            await asyncio.to_thread(
                wait_until,
                lambda: sentinel_set.master_port() == sentinel_set.replica.port,
                30,
                "the sentinel to promote the replica",
            )
            figures["promoted_s"] = time.monotonic() - killed
            ended["first after"] = await watched(first_success())
            figures["first_success_s"] = time.monotonic() - killed
            for number in range(2):
                ended[f"after {number}"] = await watched(
                    ndjson_stream(web.url, "Hi", 2)
                )
            return ended

        seen = asyncio.run(run())
    finally:
        agent.stop()
        web.stop()
    print(f"\nfailover: {figures}; clients saw {seen}")
    for name in ("a", "b"):
        assert seen[name] in ("502", "503", "504"), (name, seen[name])
    assert seen["first after"] == "done"
    assert seen["after 0"] == "done"
    assert seen["after 1"] == "done"
    # The new master holds no claim for the requests that ended.
    client = redis.Redis(port=sentinel_set.replica.port, decode_responses=True)

    def no_claims() -> bool:
        members: set[str] = client.smembers(keys.agents_set())  # type: ignore[assignment]
        return all(client.zcard(keys.agent_claims(m)) == 0 for m in members)

    try:
        wait_until(no_claims, 20, "no claim left on the new master")
    finally:
        client.close()
