"""Watching slots free up and claims come and go, for the cancellation tests."""

from __future__ import annotations

import time

import httpx
import redis

from balancer import keys
from tests.support.processes import wait_until
from tests.support.redis_server import RedisServer
from tests.support.web import WebServer

# How long the agents may take to report an idle slot: they report once a
# second, a cancelled request does not make them report sooner, and the slot
# frees at the end of the decode step in progress, which takes seconds on an
# overloaded test machine.  An uncancelled generation would run for minutes.
REPORT_LAG_S = 10.0
# How long a request may wait for its first token once a slot was freed for
# it: about 0.2 s on an idle machine, but one decode step can take seconds on
# a shared, overloaded test machine.  Without the cancellation the request
# would wait for the abandoned generation (minutes) and end with a 504 after
# the 30 s item timeout, so this bound still tells the two apart.
FIRST_TOKEN_BUDGET_S = 15.0


def slots_processing(web: WebServer) -> int:
    return sum(int(agent["slots_processing"]) for agent in web.agents())


def wait_for_idle_slots(web: WebServer, timeout: float) -> float:
    """Seconds until the agents report no slot processing; TimeoutError after."""
    started = time.monotonic()
    wait_until(lambda: slots_processing(web) == 0, timeout, "idle slots")
    return time.monotonic() - started


def claimed_slots(redis_server: RedisServer) -> int:
    """Slots the web tier holds claims on, across all agents (in Redis)."""
    client = redis.Redis(port=redis_server.port)
    try:
        members: set[bytes] = client.smembers(keys.agents_set())  # type: ignore[assignment]
        return sum(
            int(client.zcard(keys.agent_claims(agent_id.decode())))
            for agent_id in members
        )
    finally:
        client.close()


def wait_for_claims(redis_server: RedisServer, count: int, timeout: float) -> None:
    wait_until(lambda: claimed_slots(redis_server) == count, timeout, f"{count} claims")


def seconds_to_first_token(web: WebServer, prompt: str = "Hello") -> float:
    """How long a new raw-prompt request waits for its first token."""
    started = time.monotonic()
    with httpx.stream(
        "POST",
        f"{web.url}/api/v1/continue_from_raw_prompt",
        json={"raw_prompt": prompt, "max_tokens": 2},
        timeout=60,
    ) as response:
        assert response.status_code == 200, response.read()
        first = next(response.iter_lines())
    assert "ContentToken" in first, first
    return time.monotonic() - started
