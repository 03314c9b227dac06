"""Faults under traffic: a web replica killed mid-stream, disconnect storms, load.

Every test bounds its traffic in count and time and ends by checking that no
slot is leaked and the buffer is empty.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import time
from collections import Counter
from typing import Any

import httpx
import pytest

from tests.conftest import (
    AUTH,
    ENDLESS_PROMPT,
    Fleet,
    WebServer,
    request_log,
    wait_until,
)


def fleet_is_idle(web: WebServer) -> bool:
    agents = web.agents()
    buffered = httpx.get(f"{web.url}/api/v1/buffered_requests", headers=AUTH).json()
    return (
        all(a["slots_processing"] == 0 for a in agents)
        and buffered["buffered_requests_current"] == 0
    )


def test_web_replica_killed_mid_stream_frees_the_agent(fleet: Fleet) -> None:
    doomed = fleet.web()
    survivor = fleet.web(PADDLER_BUFFERED_REQUEST_TIMEOUT_MS="30000")
    fleet.agent("worker", slots=1)
    survivor.wait_for_ready_agents(1)
    received = 0
    with (
        pytest.raises(httpx.HTTPError),
        httpx.stream(
            "POST",
            f"{doomed.url}/api/v1/continue_from_raw_prompt",
            json={"raw_prompt": ENDLESS_PROMPT, "max_tokens": 100_000},
            timeout=30,
        ) as response,
    ):
        for _ in response.iter_lines():
            received += 1
            if received == 3:
                doomed.process.send_signal(signal.SIGKILL)
    # The agent notices that nobody reads the stream and frees its slot.
    wait_until(lambda: survivor.agents()[0]["slots_processing"] == 0, 15, "free slot")
    # The dead replica's claim lapses, and the slot serves the survivor.
    response = httpx.post(
        f"{survivor.url}/api/v1/continue_from_raw_prompt",
        json={"raw_prompt": "Hello", "max_tokens": 3},
        timeout=60,
    )
    assert response.status_code == 200
    assert '"Done"' in response.text


def test_clients_disconnecting_in_a_storm_leak_no_slot(fleet: Fleet) -> None:
    web = fleet.web(PADDLER_BUFFERED_REQUEST_TIMEOUT_MS="20000")
    fleet.agent("stormy", slots=2)
    web.wait_for_ready_agents(1)

    async def impatient(client: httpx.AsyncClient, wait: float) -> None:
        try:
            async with client.stream(
                "POST",
                f"{web.url}/api/v1/continue_from_raw_prompt",
                json={"raw_prompt": "Tell me everything:", "max_tokens": 500},
            ) as response:
                async for _ in response.aiter_lines():
                    await asyncio.sleep(wait)
                    return  # hang up after the first line
        except httpx.HTTPError:
            pass

    async def storm() -> None:
        async with httpx.AsyncClient(timeout=30) as client:
            waits = [random.Random(i).uniform(0, 0.3) for i in range(24)]
            tasks = [
                asyncio.wait_for(
                    impatient(client, wait), timeout=random.uniform(0.2, 3)
                )
                for wait in waits
            ]
            await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(storm())
    wait_until(lambda: fleet_is_idle(web), 20, "every slot free and no buffer")
    response = httpx.post(
        f"{web.url}/api/v1/continue_from_raw_prompt",
        json={"raw_prompt": "Calm again", "max_tokens": 3},
        timeout=60,
    )
    assert response.status_code == 200


@pytest.mark.load
def test_load_over_two_agents_reconciles_exactly(fleet: Fleet) -> None:
    """Bounded load (20 s, 16 clients) with small buffers, short timeouts and
    clients that give up: every request ends in one known way, the client's
    counts equal the server's request log, and the fleet ends idle."""
    web = fleet.web(
        PADDLER_MAX_BUFFERED_REQUESTS="4",
        PADDLER_BUFFERED_REQUEST_TIMEOUT_MS="1500",
    )
    fleet.agent("one", slots=2)
    fleet.agent("two", slots=2)
    web.wait_for_ready_agents(2)
    outcomes: Counter[str] = Counter()
    deadline = time.monotonic() + 20

    async def client(index: int) -> None:
        chance = random.Random(index)
        async with httpx.AsyncClient(timeout=60) as http:
            while time.monotonic() < deadline:
                give_up = chance.random() < 0.15
                # A client that gives up asks for more than it can get before
                # it hangs up, so the server cannot have finished first.
                tokens = 400 if give_up else chance.randint(1, 24)
                outcome = await one_request(http, tokens, give_up)
                outcomes[outcome] += 1
                if outcome == "503":
                    await asyncio.sleep(0.1)  # back off a little, as clients do

    async def one_request(http: httpx.AsyncClient, tokens: int, give_up: bool) -> str:
        async with http.stream(
            "POST",
            f"{web.url}/api/v1/continue_from_raw_prompt",
            json={"raw_prompt": "Go on:", "max_tokens": tokens},
        ) as response:
            if response.status_code != 200:
                body = json.loads(await response.aread())
                return str(body["error"]["code"])
            last: dict[str, Any] = {}
            async for line in response.aiter_lines():
                if give_up:
                    return "cancelled"
                last = json.loads(line)
        if "Error" in last:
            return str(last["Error"]["error"]["code"])
        assert "Done" in last["Response"]["response"]["GeneratedToken"]
        return "done"

    async def run() -> None:
        await asyncio.gather(*(client(i) for i in range(16)))

    asyncio.run(run())
    wait_until(lambda: fleet_is_idle(web), 20, "every slot free and no buffer")
    sent = sum(outcomes.values())
    print(f"load: {sent} requests, outcomes {dict(outcomes)}")
    assert set(outcomes) <= {"done", "503", "504", "502", "cancelled"}
    assert outcomes["done"] > 0 and outcomes["503"] > 0 and outcomes["cancelled"] > 0
    # The server saw exactly what the clients saw.
    server = Counter(record["outcome"] for record in request_log(fleet))
    assert server == outcomes
