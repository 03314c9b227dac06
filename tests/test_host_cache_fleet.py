"""The host-memory tier end to end: real agents report what their tier holds,
the balancer routes a conversation back to the agent whose tier holds it, the
request log says so, and a model swap empties the tier."""

from __future__ import annotations

import json
from typing import Any

import httpx

from balancer import keys
from tests.support.fleet import Fleet, request_log
from tests.support.processes import wait_until
from tests.support.web import WebServer

TOPICS = ("a flat tyre", "squeaky brakes", "a loose chain")


def host_tiers(fleet: Fleet) -> dict[str, dict[str, Any]]:
    """What each agent last reported of its host tier, by agent name."""
    client = fleet.client()
    try:
        members: set[bytes] = client.smembers(keys.agents_set())  # type: ignore[assignment]
        tiers: dict[str, dict[str, Any]] = {}
        for member in members:
            raw: bytes | None = client.get(keys.agent_status(member.decode()))  # type: ignore[assignment]
            if raw is not None:
                report = json.loads(raw)
                tiers[report["name"]] = report["host_cache"]
        return tiers
    finally:
        client.close()


def ask(web: WebServer, history: list[dict[str, str]]) -> str:
    response = httpx.post(
        f"{web.url}/api/v1/continue_from_conversation_history",
        json={"conversation_history": history, "max_tokens": 8},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    lines = [json.loads(line) for line in response.text.splitlines() if line]
    assert "Response" in lines[-1], lines[-1]
    return "".join(
        line["Response"]["response"]["GeneratedToken"].get("ContentToken", "")
        for line in lines
    )


def first_turn(topic: str) -> list[dict[str, str]]:
    # No system prompt: conversations that share none spread over the empty
    # slots first (a shared one would draw them all to the slot holding it).
    return [
        {
            "role": "user",
            "content": f"I have a problem with {topic} on my bicycle. "
            "What should I check first, and what will a repair cost?",
        }
    ]


def wait_for_idle(web: WebServer) -> None:
    """Until the agents report every slot idle (they report the slot's new
    contents with it)."""
    wait_until(
        lambda: all(a["slots_processing"] == 0 for a in web.agents()),
        30,
        "idle agents",
    )


def test_a_conversation_comes_back_from_the_host_tier_of_its_agent(
    fleet: Fleet,
) -> None:
    """Two agents of one slot, three conversations: the third takes a slot,
    and the conversation that held it goes to that agent's host tier; its
    next turn is routed there and restored."""
    web = fleet.web()
    fleet.agent("left", 1)
    fleet.agent("right", 1)
    web.wait_for_ready_agents(2)
    histories = {topic: first_turn(topic) for topic in TOPICS}
    for topic in TOPICS:
        answer = ask(web, histories[topic])
        histories[topic].append({"role": "assistant", "content": answer})
        wait_for_idle(web)
    records = {r["id"]: r for r in request_log(fleet)}
    ordered = sorted(records.values(), key=lambda r: r["finished_at"])
    by_topic = dict(zip(TOPICS, ordered, strict=True))
    taker = by_topic[TOPICS[2]]["agent"]
    evicted = next(t for t in TOPICS[:2] if by_topic[t]["agent"] == taker)
    wait_until(
        lambda: host_tiers(fleet).get(taker, {}).get("entries") == 1,
        30,
        f"{taker}'s host tier to hold the conversation about {evicted}",
    )
    tier = host_tiers(fleet)[taker]
    assert 0 < tier["bytes"] <= tier["budget_bytes"]
    assert tier["prefixes"], tier

    history = [*histories[evicted], {"role": "user", "content": "What does it cost?"}]
    ask(web, history)
    latest = max(request_log(fleet), key=lambda r: r["finished_at"])
    assert latest["agent"] == taker
    assert latest["why"].startswith("host-tier cache match"), latest["why"]
    # The restored turn's prompt and answer count as cached.
    assert latest["cached_prompt_tokens"] >= by_topic[evicted]["prompt_tokens"]
    wait_until(
        lambda: host_tiers(fleet)[taker]["hits"] == 1, 30, "the tier's hit reported"
    )


def test_a_model_swap_empties_the_host_tier(fleet: Fleet) -> None:
    web = fleet.web()
    fleet.agent("swapper", 1)
    web.wait_for_ready_agents(1)
    for topic in TOPICS[:2]:
        ask(web, first_turn(topic))
    wait_until(
        lambda: host_tiers(fleet)["swapper"]["entries"] == 1, 30, "a saved state"
    )
    changed = json.loads(json.dumps(fleet.state))
    changed["inference_parameters"]["context_size"] = 1024
    web.put_desired_state(changed)
    wait_until(
        lambda: host_tiers(fleet)["swapper"]["entries"] == 0, 60, "an empty tier"
    )
    web.wait_for_ready_agents(1)
