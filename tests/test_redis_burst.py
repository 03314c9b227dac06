"""A burst of requests on one web process: every one is served, none gets a
503 because the process ran out of Redis connections.

redis-py's asyncio pools fail a command at once when all their connections
are in use (100 by default): before ``PADDLER_REDIS_MAX_CONNECTIONS`` and the
blocking pool of ``balancer.redis_connection``, 156 of 256 requests sent at
once to one web process got ``503 The balancer cannot reach Redis``.  And on
PostgreSQL (CI's database) 161 of 256 got 500 while each request read the
inference keys for itself: each held a database connection for its whole
stream, more than PostgreSQL's 100 (``inference.access`` reads them once).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.constants import GREEDY_PARAMETERS
from tests.support.fleet import Fleet
from tests.support.web import WebServer

SLOTS = 256
TOKENS = 8


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """A synthetic agent of ``SLOTS`` slots: a burst of that many requests
    all start at once, none waits in the buffer."""
    state = {"model": "None", "inference_parameters": dict(GREEDY_PARAMETERS)}
    fleet = Fleet(tmp_path_factory.mktemp("burst"), state)
    try:
        fleet.web()
        fleet.agent("synthetic", SLOTS, "--backend", "synthetic")
        fleet.webs[0].wait_for_ready_agents(1)
        yield fleet
    finally:
        fleet.stop()


async def one_request(url: str) -> tuple[str, int]:
    """The status line and the tokens of one raw-prompt request, on a
    connection of its own (a bare client: all of them start at once)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    body = json.dumps({"raw_prompt": "x", "max_tokens": TOKENS}).encode()
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        (
            "POST /api/v1/continue_from_raw_prompt HTTP/1.1\r\n"
            f"Host: {host}:{port}\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
        + body
    )
    try:
        response = await asyncio.wait_for(reader.read(), timeout=120)
    finally:
        writer.close()
    status = response.split(b"\r\n", 1)[0].decode()
    return status, response.count(b'"ContentToken"')


def burst(web: WebServer, count: int) -> list[tuple[str, int]]:
    async def all_at_once() -> list[tuple[str, int]]:
        return await asyncio.gather(*(one_request(web.url) for _ in range(count)))

    return asyncio.run(all_at_once())


def test_a_burst_of_requests_is_served_in_full(fleet: Fleet) -> None:
    results = burst(fleet.webs[0], SLOTS)

    failed = [status for status, _ in results if status != "HTTP/1.1 200 OK"]
    assert not failed, f"{len(failed)} of {SLOTS} failed: {sorted(set(failed))}"
    assert [tokens for _, tokens in results] == [TOKENS] * SLOTS


def test_requests_wait_for_a_redis_connection_rather_than_fail(
    fleet: Fleet, tmp_path: Path
) -> None:
    """With a pool of 4 connections, 64 requests at once still all succeed:
    a command waits for a connection to come back."""
    web = fleet.web(PADDLER_REDIS_MAX_CONNECTIONS="4")

    results = burst(web, 64)

    failed = [status for status, _ in results if status != "HTTP/1.1 200 OK"]
    assert not failed, f"{len(failed)} of 64 failed: {sorted(set(failed))}"
    assert [tokens for _, tokens in results] == [TOKENS] * 64
