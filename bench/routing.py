"""Conversation-aware routing against least-busy and round-robin, in one run.

A multi-turn chat workload (16 conversations of 6 turns, a shared system
prompt, people pausing between turns) over 2 agents of 4 slots each.  The same
fleet serves three web servers, one per routing policy, one after the other,
each with conversations of its own.  Figures: the share of the prompt tokens
of turns 2.. served from a slot's cache, and the time to first token.

    .venv/bin/python -m bench.routing
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import MODEL, median, percentile, report
from inference.chat_template import GEMMA_CHAT_TEMPLATE
from tests.conftest import start_agent, start_redis, start_web, stop_process

SYSTEM_PROMPT = (
    "You are the support assistant of a bicycle shop. You know the opening "
    "hours (9 to 18, closed on Sundays), the repair prices (a flat tyre costs "
    "12 euros, a brake service 25 euros, a full service 60 euros) and the "
    "brands we sell (Gazelle, Brompton, Trek). Answer in one friendly sentence. "
) * 3
TOPICS = [
    "a flat tyre",
    "brakes",
    "a new bike",
    "opening hours",
    "gears",
    "a child seat",
    "lights",
    "a chain",
    "a saddle",
    "a lock",
    "pedals",
    "a basket",
    "mudguards",
    "a bell",
    "tyre pressure",
    "a helmet",
]


async def conversation(
    client: httpx.AsyncClient, url: str, topic: str, turns: int, seed: int
) -> list[dict[str, Any]]:
    pauses = random.Random(seed)
    history: list[dict[str, str]] = [{"role": "system", "content": SYSTEM_PROMPT}]
    results = []
    for turn in range(turns):
        await asyncio.sleep(pauses.uniform(0.0, 1.5))
        history.append(
            {"role": "user", "content": f"Question {turn + 1} about {topic}?"}
        )
        started = time.perf_counter()
        first_token = None
        text = ""
        usage: dict[str, Any] = {}
        async with client.stream(
            "POST",
            f"{url}/api/v1/continue_from_conversation_history",
            json={"conversation_history": history, "max_tokens": 16},
        ) as response:
            async for line in response.aiter_lines():
                if not line:
                    continue
                if first_token is None:
                    first_token = time.perf_counter() - started
                generated = json.loads(line)["Response"]["response"]["GeneratedToken"]
                text += generated.get("ContentToken", "")
                if "Done" in generated:
                    usage = generated["Done"]["usage"]
        history.append({"role": "assistant", "content": text})
        results.append({"turn": turn, "ttft": first_token, **usage})
    return results


async def workload(
    url: str, conversations: int, turns: int, tag: str
) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=600) as client:
        started = time.perf_counter()
        outcomes = await asyncio.gather(
            *(
                conversation(
                    client, url, f"{TOPICS[i % len(TOPICS)]} ({tag})", turns, seed=i
                )
                for i in range(conversations)
            )
        )
        elapsed = time.perf_counter() - started
    turns_all = [t for outcome in outcomes for t in outcome]
    later = [t for t in turns_all if t["turn"] > 0]
    ttfts = [t["ttft"] * 1000 for t in turns_all if t["ttft"] is not None]
    return {
        "cached_share": sum(t["cached_prompt_tokens"] for t in later)
        / sum(t["prompt_tokens"] for t in later),
        "ttft_mean_ms": sum(ttfts) / len(ttfts),
        "ttft_median_ms": median(ttfts),
        "ttft_p95_ms": percentile(ttfts, 0.95),
        "seconds": elapsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--conversations", type=int, default=16)
    parser.add_argument("--turns", type=int, default=6)
    parser.add_argument("--slots", type=int, default=4)
    args = parser.parse_args()
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        redis_server = start_redis()
        webs = {
            policy: start_web(
                redis_server.url,
                tmp,
                PADDLER_ROUTING_POLICY=policy,
                PADDLER_LOG_LEVEL="WARNING",
                PADDLER_BUFFERED_REQUEST_TIMEOUT_MS="600000",
            )
            for policy in ("prefix", "least_busy", "round_robin")
        }
        webs["prefix"].put_desired_state(
            {
                "model": {"LocalToAgent": str(MODEL)},
                "chat_template_override": {"content": GEMMA_CHAT_TEMPLATE},
                "use_chat_template_override": True,
                "inference_parameters": {"temperature": 0.0, "context_size": 2048},
            }
        )
        agents = [
            start_agent(redis_server.url, tmp, name, args.slots)
            for name in ("left", "right")
        ]
        try:
            webs["prefix"].wait_for_ready_agents(2)
            for policy, web in webs.items():
                results[policy] = asyncio.run(
                    workload(web.url, args.conversations, args.turns, policy)
                )
                print(policy, results[policy], flush=True)
        finally:
            for agent in agents:
                agent.stop()
            for web in webs.values():
                web.stop()
            stop_process(redis_server.process)
    baseline = results["least_busy"]
    report(
        "routing",
        title="Routing: conversation-aware against least-busy and round-robin",
        columns=[
            "policy",
            "prompt tokens from cache (turns 2+)",
            "TTFT mean (ms)",
            "TTFT p95 (ms)",
            "TTFT mean vs least-busy",
            "wall (s)",
        ],
        rows=[
            [
                policy,
                f"{r['cached_share']:.0%}",
                f"{r['ttft_mean_ms']:.0f}",
                f"{r['ttft_p95_ms']:.0f}",
                f"{r['ttft_mean_ms'] / baseline['ttft_mean_ms']:.2f}x",
                f"{r['seconds']:.1f}",
            ]
            for policy, r in results.items()
        ],
        notes=[
            f"{args.conversations} conversations of {args.turns} turns, a shared "
            f"system prompt, 2 agents of {args.slots} slots, greedy, 16 tokens "
            "per answer, random pauses of 0 to 1.5 s between turns (seeded).",
        ],
        data={"args": vars(args), "results": results},
    )


if __name__ == "__main__":
    main()
