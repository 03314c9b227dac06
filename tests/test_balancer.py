"""The balancer end to end: routing, buffer, scale from zero, replicas, faults.

Each test builds its own small fleet on its own Redis (the buffer count is
global per Redis), with real agents serving the real model.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import threading
import time
from typing import Any

import httpx

from balancer import keys
from tests.support.constants import AUTH, ENDLESS_PROMPT
from tests.support.fleet import Fleet, request_log
from tests.support.processes import wait_until
from tests.support.streams import read_ndjson
from tests.support.web import WebServer


def briefing(topic: str) -> str:
    return (
        f"You are a patient teacher who knows everything about {topic}. "
        f"Answer every question about {topic} in one short, friendly sentence, "
        "with a concrete number or name in it when you can. Never repeat an "
        "earlier answer, never ask a question back, and never use lists. "
        f"If a question is not about {topic}, steer the talk back to {topic} "
        "politely. Prefer facts a curious ten-year-old would remember. "
    ) * 2


async def converse(
    client: httpx.AsyncClient, url: str, topic: str, turns: int, seed: int
) -> list[dict[str, Any]]:
    """One multi-turn conversation; the usage of every turn.

    People pause between turns for different times, so the conversations'
    turns do not arrive in the same order every round.
    """
    pauses = random.Random(seed)
    # A system prompt of its own, as product teams send: most of every later
    # turn's prompt is context the slot that served the last turn already has.
    history: list[dict[str, str]] = [{"role": "system", "content": briefing(topic)}]
    usages: list[dict[str, Any]] = []
    for turn in range(turns):
        await asyncio.sleep(pauses.uniform(0.0, 0.8))
        history.append(
            {
                "role": "user",
                "content": f"Tell me fact number {turn + 1} about {topic}.",
            }
        )
        response = await client.post(
            f"{url}/api/v1/continue_from_conversation_history",
            json={"conversation_history": history, "max_tokens": 16},
        )
        assert response.status_code == 200, response.text
        lines = [json.loads(line) for line in response.text.splitlines() if line]
        text = "".join(
            line["Response"]["response"]["GeneratedToken"].get("ContentToken", "")
            for line in lines
            if "Response" in line
        )
        done = lines[-1]["Response"]["response"]["GeneratedToken"]["Done"]
        usages.append(done["usage"])
        history.append({"role": "assistant", "content": text})
    return usages


async def cached_share(url: str, conversations: int, turns: int) -> float:
    """Share of the prompt tokens of turns 2.. that came from a slot's cache."""
    topics = ["the moon", "volcanoes", "honey bees", "the Nile", "glaciers", "owls"]
    async with httpx.AsyncClient(timeout=120) as client:
        results = await asyncio.gather(
            *(
                converse(client, url, topics[i], turns, seed=i)
                for i in range(conversations)
            )
        )
    later = [usage for usages in results for usage in usages[1:]]
    prompt = sum(int(u["prompt_tokens"]) for u in later)
    cached = sum(int(u["cached_prompt_tokens"]) for u in later)
    return cached / prompt


def test_conversations_stick_to_the_slot_that_holds_them(fleet: Fleet) -> None:
    """4 concurrent 4-turn conversations over 2 agents of 2 slots each.

    ``bench/routing.py`` compares this with least-busy and round-robin routing
    in one run; here the figure for conversation-aware routing is checked.
    """
    web = fleet.web()
    fleet.agent("left")
    fleet.agent("right")
    web.wait_for_ready_agents(2)
    share = asyncio.run(cached_share(web.url, 4, 4))
    print(f"prompt tokens of turns 2-4 served from cache: {share:.2f}")
    assert share >= 0.8
    records = [r for r in request_log(fleet) if r["matched_prefix_blocks"] > 0]
    assert len(records) >= 8, "later turns were not routed by their cache match"
    assert all("cache match" in r["why"] for r in records)
    assert all(r["slot"] in (0, 1) for r in records)


def test_a_new_conversation_leaves_an_idle_conversation_cached(fleet: Fleet) -> None:
    """One agent of 2 slots: conversation A, then B while A's reader thinks,
    then A's next turn.  B takes the empty slot, so A's turn finds its whole
    history cached; evicting A for the few tokens B shares with it (the chat
    template's opening) would make A evaluate everything again."""
    web = fleet.web()
    fleet.agent("thinker", slots=2)
    web.wait_for_ready_agents(1)

    def turn(history: list[dict[str, str]]) -> dict[str, Any]:
        response = httpx.post(
            f"{web.url}/api/v1/continue_from_conversation_history",
            json={"conversation_history": history, "max_tokens": 8},
            timeout=60,
        )
        assert response.status_code == 200, response.text
        lines = [json.loads(line) for line in response.text.splitlines() if line]
        history.append(
            {
                "role": "assistant",
                "content": "".join(
                    line["Response"]["response"]["GeneratedToken"].get(
                        "ContentToken", ""
                    )
                    for line in lines
                ),
            }
        )
        usage: dict[str, Any] = lines[-1]["Response"]["response"]["GeneratedToken"][
            "Done"
        ]["usage"]
        return usage

    a = [{"role": "system", "content": briefing("owls")}]
    b = [{"role": "system", "content": briefing("glaciers")}]
    a.append({"role": "user", "content": "How long do owls live?"})
    turn(a)
    b.append({"role": "user", "content": "How thick can a glacier be?"})
    turn(b)
    a.append({"role": "user", "content": "What do owls eat?"})
    usage = turn(a)
    assert usage["cached_prompt_tokens"] >= 0.8 * usage["prompt_tokens"], usage
    slots = [r["slot"] for r in reversed(request_log(fleet))]
    assert slots[0] != slots[1], "B took the slot that held A"
    assert slots[2] == slots[0]


def post_raw(url: str, prompt: str, max_tokens: int, timeout: float = 60) -> Any:
    return httpx.post(
        f"{url}/api/v1/continue_from_raw_prompt",
        json={"raw_prompt": prompt, "max_tokens": max_tokens},
        timeout=timeout,
    )


def test_full_buffer_answers_503_and_a_long_wait_504(fleet: Fleet) -> None:
    web = fleet.web(
        PADDLER_MAX_BUFFERED_REQUESTS="1", PADDLER_BUFFERED_REQUEST_TIMEOUT_MS="1500"
    )
    fleet.agent("only", slots=1)
    web.wait_for_ready_agents(1)
    results: dict[str, Any] = {}

    def run(name: str, max_tokens: int) -> None:
        results[name] = post_raw(web.url, ENDLESS_PROMPT, max_tokens)

    # The slot stays busy until the test lets go of this stream, however fast
    # the machine generates.
    with (
        httpx.Client(timeout=60) as client,
        client.stream(
            "POST",
            f"{web.url}/api/v1/continue_from_raw_prompt",
            json={"raw_prompt": ENDLESS_PROMPT, "max_tokens": 4000},
        ) as holder,
    ):
        assert holder.status_code == 200
        held = holder.iter_lines()  # dropping the iterator would drop the stream
        next(held)
        waiting = threading.Thread(target=run, args=("buffered", 5))
        waiting.start()
        wait_until(
            lambda: (
                httpx.get(f"{web.url}/api/v1/buffered_requests", headers=AUTH).json()[
                    "buffered_requests_current"
                ]
                == 1
            ),
            10,
            "a buffered request",
        )
        overflow = post_raw(web.url, "No room", 5)
        assert overflow.status_code == 503
        assert overflow.json()["error"]["description"] == "Buffered requests overflow"
        waiting.join()
        assert results["buffered"].status_code == 504
        assert "timed out" in results["buffered"].json()["error"]["description"]
    wait_until(lambda: len(request_log(fleet)) == 3, 5, "three logged requests")
    outcomes = sorted(r["outcome"] for r in request_log(fleet))
    assert outcomes == ["503", "504", "cancelled"]


def test_buffered_requests_are_served_first_come_first_served(fleet: Fleet) -> None:
    web = fleet.web(PADDLER_BUFFERED_REQUEST_TIMEOUT_MS="60000")
    fleet.agent("only", slots=1)
    web.wait_for_ready_agents(1)
    finished: list[int] = []
    everyone_waits = threading.Event()

    def hold_the_slot() -> None:
        # Streams until every other request is buffered, then hangs up.
        with httpx.stream(
            "POST",
            f"{web.url}/api/v1/continue_from_raw_prompt",
            json={"raw_prompt": ENDLESS_PROMPT, "max_tokens": 2000},
            timeout=60,
        ) as response:
            for _ in response.iter_lines():
                if everyone_waits.is_set():
                    return

    def run(index: int) -> None:
        response = post_raw(web.url, f"Request {index}:", 4)
        assert response.status_code == 200
        finished.append(index)

    holder = threading.Thread(target=hold_the_slot)
    holder.start()
    wait_until(lambda: web.agents()[0]["slots_processing"] == 1, 10, "busy slot")
    threads = [threading.Thread(target=run, args=(i,)) for i in range(1, 5)]
    for index, thread in enumerate(threads, start=1):
        thread.start()
        wait_until(lambda n=index: _buffered(web) == n, 10, f"{index} buffered")
    everyone_waits.set()
    for thread in [holder, *threads]:
        thread.join()
    assert finished == [1, 2, 3, 4]


def _buffered(web: WebServer) -> int:
    snapshot = httpx.get(f"{web.url}/api/v1/buffered_requests", headers=AUTH).json()
    count: int = snapshot["buffered_requests_current"]
    return count


def test_requests_wait_for_the_first_agent_when_the_fleet_is_empty(
    fleet: Fleet,
) -> None:
    web = fleet.web(PADDLER_BUFFERED_REQUEST_TIMEOUT_MS="60000")
    results: dict[str, Any] = {}

    def run() -> None:
        results["response"] = post_raw(web.url, "Hello", 5)

    thread = threading.Thread(target=run)
    thread.start()
    wait_until(lambda: _buffered(web) == 1, 10, "the request to be buffered")
    assert web.agents() == []
    fleet.agent("late")
    thread.join()
    response = results["response"]
    assert response.status_code == 200
    assert '"Done"' in response.text
    assert _buffered(web) == 0


def test_two_replicas_never_put_more_requests_on_an_agent_than_it_has_slots(
    fleet: Fleet,
) -> None:
    first = fleet.web(PADDLER_BUFFERED_REQUEST_TIMEOUT_MS="60000")
    second = fleet.web(PADDLER_BUFFERED_REQUEST_TIMEOUT_MS="60000")
    fleet.agent("shared", slots=2)
    first.wait_for_ready_agents(1)
    peak = 0
    stop = threading.Event()

    def watch() -> None:
        nonlocal peak
        while not stop.is_set():
            for agent in first.agents():
                peak = max(peak, agent["slots_processing"])

    async def load() -> list[int]:
        async with httpx.AsyncClient(timeout=120) as client:
            responses = await asyncio.gather(
                *(
                    client.post(
                        f"{(first, second)[i % 2].url}/api/v1/continue_from_raw_prompt",
                        json={"raw_prompt": f"Story {i}:", "max_tokens": 6},
                    )
                    for i in range(10)
                )
            )
        return [r.status_code for r in responses]

    watcher = threading.Thread(target=watch)
    watcher.start()
    statuses = asyncio.run(load())
    stop.set()
    watcher.join()
    assert statuses == [200] * 10
    # Reports are up to a heartbeat old, so the peak seen may be lower than
    # the real one; an over-committed agent queues work and reports more.
    assert 1 <= peak <= 2
    records = request_log(fleet)
    assert len(records) == 10
    assert all(r["outcome"] == "done" for r in records)


def test_agent_lost_before_the_first_token_is_replaced_unnoticed(
    fleet: Fleet,
) -> None:
    web = fleet.web(PADDLER_BUFFERED_REQUEST_TIMEOUT_MS="60000")
    frozen = fleet.agent("frozen")
    web.wait_for_ready_agents(1)
    # A frozen agent keeps its registry entry until its heartbeat lapses, so
    # the request is sent to it and gets no answer.
    frozen.process.send_signal(signal.SIGSTOP)
    results: dict[str, Any] = {}

    def run() -> None:
        results["response"] = post_raw(web.url, "Hello there", 5)

    thread = threading.Thread(target=run)
    thread.start()
    fleet.agent("rescuer")
    thread.join()
    frozen.process.kill()
    response = results["response"]
    assert response.status_code == 200
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert all("Response" in line for line in lines)
    assert lines[0]["Response"]["generated_by"] == "rescuer"
    (record,) = request_log(fleet)
    assert record["retried"] is True
    assert record["outcome"] == "done"


def test_agent_killed_mid_stream_ends_it_with_502_and_frees_its_claims(
    fleet: Fleet,
) -> None:
    web = fleet.web()
    victim = fleet.agent("victim")
    web.wait_for_ready_agents(1)
    (agent_id,) = [a["id"] for a in web.agents()]
    lines: list[dict[str, Any]] = []
    with httpx.stream(
        "POST",
        f"{web.url}/api/v1/continue_from_raw_prompt",
        json={"raw_prompt": ENDLESS_PROMPT, "max_tokens": 2000},
        timeout=30,
    ) as response:
        for raw in response.iter_lines():
            lines.append(json.loads(raw))
            if len(lines) == 3:
                victim.process.kill()
                killed_at = time.monotonic()
    elapsed = time.monotonic() - killed_at
    print(f"502 line {elapsed:.1f}s after the kill")
    assert lines[-1]["Error"]["error"]["code"] == 502
    assert "disappeared" in lines[-1]["Error"]["error"]["description"]
    client = fleet.client()
    wait_until(lambda: web.agents() == [], 10, "the dead agent to be dropped")
    assert not client.exists(keys.agent_claims(agent_id))
    client.close()
    assert request_log(fleet)[0]["outcome"] == "502"


def test_ndjson_stream_of_a_finished_request_has_no_internal_fields(
    fleet: Fleet,
) -> None:
    web = fleet.web()
    fleet.agent("plain")
    web.wait_for_ready_agents(1)
    with httpx.stream(
        "POST",
        f"{web.url}/api/v1/continue_from_raw_prompt",
        json={"raw_prompt": "Hi", "max_tokens": 3},
    ) as response:
        lines = read_ndjson(response)
    assert "meta" not in json.dumps(lines)


def test_no_output_for_the_item_timeout_ends_the_stream_with_504(fleet: Fleet) -> None:
    web = fleet.web(PADDLER_INFERENCE_ITEM_TIMEOUT_MS="1500")
    stalled = fleet.agent("stalled")
    web.wait_for_ready_agents(1)
    lines: list[dict[str, Any]] = []
    with httpx.stream(
        "POST",
        f"{web.url}/api/v1/continue_from_raw_prompt",
        json={"raw_prompt": ENDLESS_PROMPT, "max_tokens": 2000},
        timeout=30,
    ) as response:
        for raw in response.iter_lines():
            lines.append(json.loads(raw))
            if len(lines) == 2:
                # Alive (its heartbeat key has not lapsed yet) but silent.
                stalled.process.send_signal(signal.SIGSTOP)
    stalled.process.send_signal(signal.SIGCONT)
    error = lines[-1]["Error"]["error"]
    assert error["code"] == 504
    assert error["description"] == "Timed out waiting for the next token"


def test_a_long_prompt_outlasts_the_item_timeout_while_it_is_evaluated(
    fleet: Fleet,
) -> None:
    """Each prompt chunk tells the web tier the request is alive."""
    parameters = fleet.state["inference_parameters"]
    fleet.state = {
        **fleet.state,
        "inference_parameters": {**parameters, "n_batch": 32},
    }
    # Evaluating the whole prompt in 32-token chunks takes longer than this
    # (about 4 s on 2 idle cores); one chunk takes about a tenth of a second.
    web = fleet.web(PADDLER_INFERENCE_ITEM_TIMEOUT_MS="2500")
    fleet.agent("patient", slots=1)
    web.wait_for_ready_agents(1)
    with httpx.stream(
        "POST",
        f"{web.url}/api/v1/continue_from_raw_prompt",
        json={"raw_prompt": "a " * 1200, "max_tokens": 3},
        timeout=120,
    ) as response:
        lines = read_ndjson(response)
    usage = lines[-1]["Response"]["response"]["GeneratedToken"]["Done"]["usage"]
    assert usage["prompt_tokens"] > 1200
    assert all("Response" in line for line in lines)


def test_a_cancelled_request_is_logged_with_its_slot(fleet: Fleet) -> None:
    web = fleet.web()
    fleet.agent("quitter", slots=2)
    web.wait_for_ready_agents(1)
    with httpx.stream(
        "POST",
        f"{web.url}/api/v1/continue_from_raw_prompt",
        json={"raw_prompt": ENDLESS_PROMPT, "max_tokens": 2000},
        timeout=30,
    ) as response:
        for count, _ in enumerate(response.iter_lines(), start=1):
            if count == 3:
                break
    (record,) = wait_until(lambda: request_log(fleet), 10, "the log record")
    assert record["outcome"] == "cancelled"
    assert record["slot"] in (0, 1)
    assert record["agent"] == "quitter"
