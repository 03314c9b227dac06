"""Faults under traffic: a web replica killed mid-stream, disconnect storms, load,
Redis restarted under load.

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
from collections.abc import Coroutine
from typing import Any

import httpx
import openai
import pytest
import websockets

from balancer import keys
from tests.support.constants import AUTH, ENDLESS_PROMPT
from tests.support.fleet import Fleet, request_log
from tests.support.processes import wait_until
from tests.support.redis_server import start_redis
from tests.support.slots import claimed_slots, wait_for_claims
from tests.support.web import WebServer, socket_url


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
    # The agent goes on for the dead replica for a while (its heartbeat key
    # has to lapse first): a report older than the request must not pass
    # for the slot freed.
    wait_until(
        lambda: survivor.agents()[0]["slots_processing"] == 1, 15, "the busy slot"
    )
    # The agent notices that nobody reads the stream and frees its slot.
    wait_until(lambda: survivor.agents()[0]["slots_processing"] == 0, 20, "free slot")
    # What the agent sent the dead replica meanwhile lies in its inbox until
    # the inbox expires (the survivor drains its own: an empty list is gone).
    # A drained inbox is deleted, and the next output makes it anew: every
    # push must set the expiry again.
    redis_client = fleet.client()
    left = [key for key in redis_client.scan_iter(match=keys.web_inbox("*"))]
    assert left, "nothing was sent after the replica died"
    assert all(0 < redis_client.ttl(key) <= 60 for key in left)
    redis_client.close()
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


# ------------------------------------------------------------------- load
# Every way a request may end, as the request log names it.
OUTCOMES = {"done", "503", "504", "502", "cancelled"}
# How long the clients keep sending.
LOAD_S = 15.0
# Longest any one request may take before the test calls it a hang.
REQUEST_WATCHDOG_S = 60.0


class Tally:
    """What the clients sent and saw: every request ends in exactly one way."""

    def __init__(self) -> None:
        self.sent: Counter[str] = Counter()
        self.ended: Counter[tuple[str, str]] = Counter()

    async def run(self, api: str, request: Coroutine[Any, Any, str]) -> str:
        """Count ``request`` (a coroutine giving its outcome) as sent and ended."""
        self.sent[api] += 1
        try:
            outcome = await asyncio.wait_for(request, REQUEST_WATCHDOG_S)
        except TimeoutError:
            outcome = "hang"
        self.ended[api, outcome] += 1
        return outcome

    def outcomes(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for (_, outcome), count in self.ended.items():
            total[outcome] += count
        return total


async def ndjson_request(
    http: httpx.AsyncClient, url: str, tokens: int, give_up: bool
) -> str:
    async with http.stream(
        "POST",
        f"{url}/api/v1/continue_from_raw_prompt",
        json={"raw_prompt": "Go on:", "max_tokens": tokens},
    ) as response:
        if response.status_code != 200:
            body = json.loads(await response.aread())
            return str(body["error"]["code"])
        last: dict[str, Any] = {}
        async for line in response.aiter_lines():
            if give_up:
                return "cancelled"  # hanging up cancels it
            last = json.loads(line)
    if "Error" in last:
        return str(last["Error"]["error"]["code"])
    assert "Done" in last["Response"]["response"]["GeneratedToken"], last
    return "done"


class LoadSocket:
    """One inference socket shared by several lanes, each with its own requests.

    A reader hands each envelope to the request its id names; envelopes of a
    request already stopped (the server may have sent a few before the stop
    arrived) are dropped.
    """

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self.requests: dict[str, asyncio.Queue[dict[str, Any]]] = {}
        self.reader = asyncio.create_task(self._read())
        self.next_id = 0

    async def _read(self) -> None:
        async for raw in self.connection:
            envelope = json.loads(raw)
            body = envelope.get("Response") or envelope["Error"]
            queue = self.requests.get(body["request_id"])
            if queue is not None:
                queue.put_nowait(envelope)

    async def request(self, tokens: int, give_up: bool) -> str:
        self.next_id += 1
        request_id = f"r{self.next_id}"
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.requests[request_id] = queue
        try:
            await self.connection.send(
                json.dumps(
                    {
                        "Request": {
                            "id": request_id,
                            "request": {
                                "ContinueFromRawPrompt": {
                                    "raw_prompt": "Tell me more:",
                                    "max_tokens": tokens,
                                }
                            },
                        }
                    }
                )
            )
            while True:
                envelope = await queue.get()
                if "Error" in envelope:
                    return str(envelope["Error"]["error"]["code"])
                token = envelope["Response"]["response"]["GeneratedToken"]
                if "Done" in token:
                    return "done"
                assert "ContentToken" in token, envelope
                if give_up:
                    await self.connection.send(
                        json.dumps({"Notification": {"StopRespondingTo": request_id}})
                    )
                    return "cancelled"
        finally:
            del self.requests[request_id]


async def openai_request(
    client: openai.AsyncOpenAI, stream: bool, tokens: int, give_up: bool
) -> str:
    messages: Any = [{"role": "user", "content": "Say something."}]
    try:
        if not stream:
            completion = await client.completions.create(
                model="m", prompt="Once upon a time", max_tokens=tokens
            )
            assert completion.choices[0].finish_reason in ("length", "stop")
            return "done"
        chunks = await client.chat.completions.create(
            model="m", messages=messages, max_tokens=tokens, stream=True
        )
        async with chunks:
            finish = None
            async for chunk in chunks:
                if not chunk.choices:
                    continue
                if give_up and chunk.choices[0].delta.content:
                    return "cancelled"  # closing the stream hangs up
                finish = chunk.choices[0].finish_reason or finish
        assert finish in ("length", "stop"), finish
        return "done"
    except openai.APIStatusError as error:
        return str(error.status_code)
    except openai.APIError as error:
        # An error event after the stream began: no status, only the words.
        if "disappeared" in error.message:
            return "502"
        if "Timed out" in error.message:
            return "504"
        return f"error: {error.message}"


@pytest.mark.load
def test_mixed_load_over_two_agents_reconciles_exactly(fleet: Fleet) -> None:
    """Bounded load (15 s, 14 clients, 4 slots) over every inference API at
    once, with small buffers,
    short timeouts and clients that give up: NDJSON streams, inference
    sockets with several requests each (some stopped), OpenAI completions
    streamed and whole.  Every request ends in one known way, the clients'
    counts equal the server's request log, and the fleet ends idle."""
    web = fleet.web(
        PADDLER_MAX_BUFFERED_REQUESTS="4",
        PADDLER_BUFFERED_REQUEST_TIMEOUT_MS="1500",
        PADDLER_REQUEST_LOG_SIZE="100000",
    )
    # One thread each: two agents share the machine's cores.
    fleet.agent("one", 2, "--threads", "1")
    fleet.agent("two", 2, "--threads", "1")
    web.wait_for_ready_agents(2)
    tally = Tally()
    started = time.monotonic()
    deadline = started + LOAD_S

    def plan(chance: random.Random) -> tuple[int, bool]:
        """How many tokens to ask for, and whether to give up after the first.

        A client that gives up asks for more than it can get before it hangs
        up, so the server cannot have finished first.
        """
        give_up = chance.random() < 0.15
        return (400 if give_up else chance.randint(1, 12)), give_up

    async def back_off(outcome: str) -> None:
        # As clients do; and a storm of instant retries would take the CPU
        # the agents need on a small test machine.
        if outcome in ("503", "504"):
            await asyncio.sleep(0.5)

    async def ndjson_client(index: int) -> None:
        chance = random.Random(index)
        async with httpx.AsyncClient(timeout=60) as http:
            while time.monotonic() < deadline:
                tokens, give_up = plan(chance)
                request = ndjson_request(http, web.url, tokens, give_up)
                await back_off(await tally.run("ndjson", request))

    async def socket_client(index: int, lanes: int) -> None:
        url = socket_url(web)
        async with websockets.connect(url) as connection:
            shared = LoadSocket(connection)

            async def lane(lane_index: int) -> None:
                chance = random.Random(1000 * index + lane_index)
                while time.monotonic() < deadline:
                    tokens, give_up = plan(chance)
                    request = shared.request(tokens, give_up)
                    await back_off(await tally.run("socket", request))

            await asyncio.gather(*(lane(i) for i in range(lanes)))
            shared.reader.cancel()

    async def openai_client(index: int, stream: bool) -> None:
        chance = random.Random(2000 + index)
        async with openai.AsyncOpenAI(
            base_url=f"{web.url}/v1", api_key="unused", max_retries=0, timeout=60
        ) as client:
            while time.monotonic() < deadline:
                tokens, give_up = plan(chance)
                request = openai_request(client, stream, tokens, give_up and stream)
                api = "openai stream" if stream else "openai"
                await back_off(await tally.run(api, request))

    async def run() -> None:
        await asyncio.gather(
            *(ndjson_client(i) for i in range(4)),
            *(socket_client(i, lanes=3) for i in range(2)),
            *(openai_client(i, stream=i % 2 == 0) for i in range(4)),
        )

    asyncio.run(run())
    ran_s = time.monotonic() - started
    wait_until(lambda: fleet_is_idle(web), 20, "every slot free and no buffer")
    assert claimed_slots(fleet.redis) == 0
    outcomes = tally.outcomes()
    print(
        f"\nload: {tally.sent.total()} requests in {ran_s:.1f}s: "
        f"{dict(sorted(tally.ended.items()))}"
    )
    assert set(outcomes) <= OUTCOMES, outcomes
    assert tally.sent.total() == outcomes.total()
    for api in ("ndjson", "socket", "openai", "openai stream"):
        assert tally.ended[api, "done"] > 0, api
    assert outcomes["503"] > 0 and outcomes["cancelled"] > 0
    # The server saw exactly what the clients saw.
    server = Counter(record["outcome"] for record in request_log(fleet))
    assert server == outcomes


# ---------------------------------------------------------- Redis restarted
CUT = (httpx.ReadError, httpx.RemoteProtocolError)


async def watched(request: Coroutine[Any, Any, str]) -> str:
    try:
        return await asyncio.wait_for(request, REQUEST_WATCHDOG_S)
    except TimeoutError:
        return "hang"


async def ndjson_stream(url: str, prompt: str, tokens: int) -> str:
    """How one NDJSON stream ended: done, an error code, a status, or cut.

    A stream that ends done must have lost no token on the way (the
    ``Done`` line counts what the agent generated).
    """
    received = 0
    try:
        async with (
            httpx.AsyncClient(timeout=REQUEST_WATCHDOG_S) as http,
            http.stream(
                "POST",
                f"{url}/api/v1/continue_from_raw_prompt",
                json={"raw_prompt": prompt, "max_tokens": tokens},
            ) as response,
        ):
            if response.status_code != 200:
                return f"status {response.status_code}"
            last: dict[str, Any] = {}
            async for line in response.aiter_lines():
                last = json.loads(line)
                output = last.get("Response", {}).get("response", {})
                if "ContentToken" in output.get("GeneratedToken", {}):
                    received += 1
    except CUT:
        return "cut"
    if "Error" in last:
        return str(last["Error"]["error"]["code"])
    done = last["Response"]["response"]["GeneratedToken"]["Done"]
    generated = done["usage"]["content_tokens"]
    return "done" if generated == received else f"done, {generated - received} lost"


async def socket_stream(url: str, prompt: str, tokens: int) -> str:
    """How one request on its own inference socket ended."""
    try:
        async with websockets.connect(url) as connection:
            await connection.send(
                json.dumps(
                    {
                        "Request": {
                            "id": "x",
                            "request": {
                                "ContinueFromRawPrompt": {
                                    "raw_prompt": prompt,
                                    "max_tokens": tokens,
                                }
                            },
                        }
                    }
                )
            )
            async for raw in connection:
                envelope = json.loads(raw)
                if "Error" in envelope:
                    return str(envelope["Error"]["error"]["code"])
                if "Done" in envelope["Response"]["response"]["GeneratedToken"]:
                    return "done"
    except websockets.ConnectionClosed:
        pass
    return "closed"


async def openai_completion(url: str) -> str:
    async with openai.AsyncOpenAI(
        base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60
    ) as client:
        try:
            await client.completions.create(model="m", prompt="Hi", max_tokens=2)
        except openai.APIStatusError as error:
            return f"status {error.status_code}"
        except openai.APIConnectionError:
            return "cut"
    return "done"


async def agents_stream(url: str, restarted: asyncio.Event) -> str:
    """An agents event stream open across the restart: it goes on and shows
    both agents again, or it is cut (EventSource clients reconnect)."""
    try:
        async with (
            httpx.AsyncClient(timeout=REQUEST_WATCHDOG_S, headers=AUTH) as http,
            http.stream("GET", f"{url}/api/v1/agents/stream") as response,
        ):
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue
                agents = json.loads(line[len("data: ") :])["agents"]
                ready = [a for a in agents if a["slots_total"] == 2]
                if restarted.is_set() and len(ready) == 2:
                    return "went on"
    except CUT:
        return "cut"
    return "ended"


# How long Redis stays away: about what restarting its container takes, and
# longer than our Redis clients retry a command (about 2 s, settings.py).
@pytest.mark.parametrize("outage_s", [1.0, 4.0])
def test_redis_restarted_under_load_ends_every_stream_explicitly_and_recovers(
    fleet: Fleet, outage_s: float
) -> None:
    """Redis is killed while requests stream and restarted empty on its port
    (no persistence, as docker-compose runs it).  Every client gets an
    explicit ending (complete, an error line or status, or a connection cut
    short) and none waits for ever; the agents join again, new requests on
    every API succeed, and no slot or claim is left behind."""
    web = fleet.web()
    fleet.agent("one", 2, "--threads", "1")
    fleet.agent("two", 2, "--threads", "1")
    web.wait_for_ready_agents(2)
    port = fleet.redis.port
    figures: dict[str, float] = {}

    def kill_redis() -> None:
        fleet.redis.process.send_signal(signal.SIGKILL)
        fleet.redis.process.wait()

    def restart_redis() -> None:
        fleet.redis = start_redis(port)

    def agents_back() -> bool:
        agents = web.agents()
        return len([a for a in agents if a["slots_total"] == 2]) == 2

    async def first_success() -> str:
        """A new request every 0.2 s until one completes."""
        while True:
            outcome = await ndjson_stream(web.url, "Hello again", 2)
            if outcome == "done":
                return outcome
            await asyncio.sleep(0.2)

    async def run() -> dict[str, str]:
        restarted = asyncio.Event()
        streaming = {
            "ndjson 1": ndjson_stream(web.url, f"{ENDLESS_PROMPT} a", 120),
            "ndjson 2": ndjson_stream(web.url, f"{ENDLESS_PROMPT} b", 120),
            "socket": socket_stream(socket_url(web), f"{ENDLESS_PROMPT} c", 120),
            "agents stream": agents_stream(web.url, restarted),
        }
        tasks = {name: asyncio.create_task(watched(c)) for name, c in streaming.items()}
        # Three slots busy, one left for the requests after the restart.
        await asyncio.to_thread(wait_for_claims, fleet.redis, 3, 30)
        await asyncio.sleep(1.0)
        await asyncio.to_thread(kill_redis)
        killed = time.monotonic()
        during = {
            "ndjson during": ndjson_stream(web.url, "Hi", 2),
            "socket during": socket_stream(socket_url(web), "Hi", 2),
            "openai during": openai_completion(web.url),
        }
        tasks |= {name: asyncio.create_task(watched(c)) for name, c in during.items()}
        await asyncio.sleep(outage_s)
        await asyncio.to_thread(restart_redis)
        up = time.monotonic()
        restarted.set()
        figures["outage_s"] = up - killed
        await asyncio.to_thread(wait_until, agents_back, 30, "both agents back")
        figures["agents_back_s"] = time.monotonic() - up
        assert await watched(first_success()) == "done"
        figures["first_success_s"] = time.monotonic() - up
        after = {
            "socket after": watched(socket_stream(socket_url(web), "Hi", 2)),
            "openai after": watched(openai_completion(web.url)),
        }
        names = [*tasks, *after]
        results = await asyncio.gather(*tasks.values(), *after.values())
        return dict(zip(names, results, strict=True))

    seen = asyncio.run(run())
    wait_until(lambda: fleet_is_idle(web), 30, "every slot free and no buffer")
    assert claimed_slots(fleet.redis) == 0
    print(
        f"\nRedis away {figures['outage_s']:.2f}s; agents back "
        f"{figures['agents_back_s']:.2f}s and a new request served "
        f"{figures['first_success_s']:.2f}s after it restarted; clients saw {seen}"
    )
    assert "hang" not in seen.values()
    for name in ("ndjson 1", "ndjson 2", "socket"):
        # Done with every token, or an error line: never a gap, never a cut.
        assert seen[name] == "done" or seen[name] in ("502", "503", "504"), (
            name,
            seen[name],
        )
    assert seen["agents stream"] in ("went on", "cut"), seen["agents stream"]
    for name in ("ndjson during", "socket during", "openai during"):
        # Served (Redis came back within our clients' retries), or 503.
        ending = seen[name]
        assert ending in ("done", "503", "status 503"), (name, ending)
    assert seen["socket after"] == "done"
    assert seen["openai after"] == "done"


def test_the_web_tier_puts_the_desired_state_back_into_an_empty_redis(
    fleet: Fleet,
) -> None:
    """Agents that start after Redis lost its data read the desired state
    from Redis; the web tier, which keeps it in the database, restores it."""
    web = fleet.web()
    assert web.agents() == []  # a first request: it starts the dispatcher
    applicable = f"{web.url}/api/v1/balancer_applicable_state"
    assert httpx.get(applicable, headers=AUTH).json() is not None
    port = fleet.redis.port
    fleet.redis.process.send_signal(signal.SIGKILL)
    fleet.redis.process.wait()
    fleet.redis = start_redis(port)
    wait_until(
        lambda: httpx.get(applicable, headers=AUTH).json() is not None,
        10,
        "the desired state back in Redis",
    )


def test_hostile_requests_and_templates_leave_the_agent_serving_and_stoppable(
    fleet: Fleet,
) -> None:
    """The agent-side attacks of issue 21, against a real web tier and agent."""
    web = fleet.web()
    agent = fleet.agent("hardened")
    web.wait_for_ready_agents(1)
    url = f"{web.url}/api/v1/continue_from_raw_prompt"
    # A grammar that used to segfault the agent is refused by the web tier.
    crashing = "root ::= " + "(" * 100_000 + '"a"' + ")" * 100_000
    response = httpx.post(
        url,
        json={
            "raw_prompt": "Hi",
            "max_tokens": 2,
            "grammar": {"type": "gbnf", "grammar": crashing},
        },
        timeout=30,
    )
    assert response.status_code == 400
    assert "grammar.grammar: the grammar is" in response.text
    # Special-token text that used to hold the tokenizer for seconds: 413.
    response = httpx.post(
        url,
        json={"raw_prompt": "<start_of_turn>" * 50_000, "max_tokens": 2},
        timeout=30,
    )
    assert response.status_code == 413
    assert "holds at most" in response.text
    # A template raising OverflowError used to end the engine thread.
    from balancer.chat_template import GEMMA_CHAT_TEMPLATE

    overflowing = "{% for i in range(100001) %}x{% endfor %}"
    web.put_desired_state(
        {**fleet.state, "chat_template_override": {"content": overflowing}}
    )
    time.sleep(2)
    response = httpx.post(
        f"{web.url}/api/v1/continue_from_conversation_history",
        json={
            "conversation_history": [{"role": "user", "content": "Hi"}],
            "max_tokens": 2,
        },
        timeout=60,
    )
    assert "OverflowError" in response.text
    web.put_desired_state(
        {**fleet.state, "chat_template_override": {"content": GEMMA_CHAT_TEMPLATE}}
    )
    with httpx.stream(
        "POST", url, json={"raw_prompt": "Hello", "max_tokens": 2}, timeout=60
    ) as streamed:
        assert "ContentToken" in streamed.read().decode()
    # SIGTERM ends the process.
    agent.process.send_signal(signal.SIGTERM)
    assert agent.process.wait(timeout=60) is not None
