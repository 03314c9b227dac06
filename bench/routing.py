"""Conversation-aware routing against least-busy and round-robin, in one run.

A multi-turn chat workload (by default 16 conversations of 6 turns with a
shared system prompt, people pausing between turns) over 2 agents of 4 slots
each.  One Redis, three web servers, one per routing policy; each policy in
turn gets freshly started agents (cold caches) and the very same
conversations.  Figures: the share of the prompt tokens of turns 2.. served
from a slot's cache, and the time to first token (mean, p95), each policy's
against least-busy's of the same run; medians over the runs.

    .venv/bin/python -m bench.routing
    # issue 4's scenario: 4 conversations of 4 turns, each with a system
    # prompt of its own, over 2 agents of 2 slots
    .venv/bin/python -m bench.routing --conversations 4 --turns 4 \
        --agents 2 --slots 2 --system-prompt own
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from balancer.chat_template import GEMMA_CHAT_TEMPLATE
from bench.common import MODEL, goal, median, percentile, report
from tests.support.fleet import start_agent
from tests.support.processes import stop_process, wait_until
from tests.support.redis_server import start_redis
from tests.support.web import WebServer, start_web

POLICIES = ("prefix", "least_busy", "round_robin")
LABELS = {
    "prefix": "conversation-aware",
    "least_busy": "least-busy",
    "round_robin": "round-robin",
}
CACHE_GOAL = 0.8  # issue 4, for conversation-aware routing
DEFAULTS = {"conversations": 16, "turns": 6, "agents": 2, "slots": 4}

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


def own_system_prompt(topic: str) -> str:
    """A system prompt of one conversation's own, as product teams send."""
    return (
        f"You are a patient teacher who knows everything about {topic}. "
        f"Answer every question about {topic} in one short, friendly sentence, "
        "with a concrete number or name in it when you can. Never repeat an "
        "earlier answer, never ask a question back, and never use lists. "
    ) * 2


async def conversation(
    client: httpx.AsyncClient,
    url: str,
    *,
    topic: str,
    system_prompt: str,
    turns: int,
    tokens: int,
    seed: int,
) -> list[dict[str, Any]]:
    pauses = random.Random(seed)
    history: list[dict[str, str]] = [{"role": "system", "content": system_prompt}]
    results = []
    for turn in range(turns):
        await asyncio.sleep(pauses.uniform(0.0, 1.5))
        history.append(
            {"role": "user", "content": f"Question {turn + 1} about {topic}?"}
        )
        started = time.perf_counter()
        first_token = None
        text = ""
        request_id = ""
        usage: dict[str, Any] = {}
        async with client.stream(
            "POST",
            f"{url}/api/v1/continue_from_conversation_history",
            json={"conversation_history": history, "max_tokens": tokens},
        ) as response:
            async for line in response.aiter_lines():
                if not line:
                    continue
                if first_token is None:
                    first_token = time.perf_counter() - started
                envelope = json.loads(line)
                if "Error" in envelope:
                    raise RuntimeError(f"{topic}, turn {turn + 1}: {line}")
                request_id = envelope["Response"]["request_id"]
                generated = envelope["Response"]["response"]["GeneratedToken"]
                text += generated.get("ContentToken", "")
                if "Done" in generated:
                    usage = generated["Done"]["usage"]
        history.append({"role": "assistant", "content": text})
        results.append(
            {"turn": turn, "ttft": first_token, "request_id": request_id, **usage}
        )
    return results


async def workload(url: str, args: argparse.Namespace) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=600) as client:
        started = time.perf_counter()
        outcomes = await asyncio.gather(
            *(
                conversation(
                    client,
                    url,
                    topic=TOPICS[i % len(TOPICS)]
                    + ("" if i < len(TOPICS) else f" ({i})"),
                    system_prompt=SYSTEM_PROMPT
                    if args.system_prompt == "shared"
                    else own_system_prompt(TOPICS[i % len(TOPICS)]),
                    turns=args.turns,
                    tokens=args.tokens,
                    seed=i,
                )
                for i in range(args.conversations)
            )
        )
        elapsed = time.perf_counter() - started
    turns_all = [t for outcome in outcomes for t in outcome]
    later = [t for t in turns_all if t["turn"] > 0]
    ttfts = [t["ttft"] * 1000 for t in turns_all if t["ttft"] is not None]
    return {
        "cached_share": sum(t["cached_prompt_tokens"] for t in later)
        / max(1, sum(t["prompt_tokens"] for t in later)),
        "ttft_mean_ms": sum(ttfts) / len(ttfts),
        "ttft_median_ms": median(ttfts),
        "ttft_p95_ms": percentile(ttfts, 0.95),
        "seconds": elapsed,
    }


def wait_for_fleet(web: WebServer, names: list[str], timeout: float = 120) -> None:
    """Until the registry holds these agents, ready, and no other.

    The previous policy's agents deregister as they stop; one that did not
    would still be routed to until its heartbeat expires.
    """

    def ready() -> bool:
        agents = web.agents()
        return sorted(a["name"] for a in agents) == sorted(names) and all(
            a["state_application_status"] == "Applied" and a["slots_total"] > 0
            for a in agents
        )

    wait_until(ready, timeout, f"agents {names}")


def agent_threads(agents: int) -> int:
    """llama.cpp threads per agent: the agents share the machine's cores."""
    return max(1, (os.cpu_count() or 1) // agents)


def one_run(
    run: int,
    webs: dict[str, WebServer],
    redis_url: str,
    tmp: Path,
    args: argparse.Namespace,
) -> dict[str, dict[str, Any]]:
    # Each run starts with another policy, so a drift in the machine's speed
    # does not always fall on the same one.
    order = [*POLICIES[run % 3 :], *POLICIES[: run % 3]]
    results: dict[str, dict[str, Any]] = {}
    for policy in order:
        names = [f"{policy}-{run}-{i}" for i in range(args.agents)]
        # The agents share the machine: each gets its share of the cores, as
        # on a real fleet each would have a host of its own (more llama.cpp
        # threads than cores make every decode wait on descheduled threads).
        threads = str(agent_threads(args.agents))
        agents = [
            start_agent(redis_url, tmp, name, args.slots, "--threads", threads)
            for name in names
        ]
        try:
            wait_for_fleet(webs[policy], names)
            results[policy] = asyncio.run(workload(webs[policy].url, args))
        finally:
            for agent in agents:
                agent.stop()
        print(f"run {run + 1}", policy, results[policy], flush=True)
    baseline = results["least_busy"]
    for result in results.values():
        result["ttft_mean_vs_least_busy"] = (
            result["ttft_mean_ms"] / baseline["ttft_mean_ms"]
        )
        result["ttft_p95_vs_least_busy"] = (
            result["ttft_p95_ms"] / baseline["ttft_p95_ms"]
        )
    return {policy: results[policy] for policy in POLICIES}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--conversations", type=int, default=DEFAULTS["conversations"])
    parser.add_argument("--turns", type=int, default=DEFAULTS["turns"])
    parser.add_argument("--agents", type=int, default=DEFAULTS["agents"])
    parser.add_argument("--slots", type=int, default=DEFAULTS["slots"])
    parser.add_argument(
        "--system-prompt",
        choices=("shared", "own"),
        default="shared",
        help="one system prompt for all conversations, or one each",
    )
    parser.add_argument("--tokens", type=int, default=16, help="per answer")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    scenario = {key: getattr(args, key) for key in DEFAULTS}
    name = (
        "routing"
        if scenario == DEFAULTS and args.system_prompt == "shared"
        else f"routing-{args.conversations}x{args.turns}-{args.agents}x{args.slots}"
        f"-{args.system_prompt}"
    )
    runs: list[dict[str, dict[str, Any]]] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        redis_server = start_redis()
        webs: dict[str, WebServer] = {}
        try:
            for policy in POLICIES:
                webs[policy] = start_web(
                    redis_server.url,
                    tmp,
                    PADDLER_ROUTING_POLICY=policy,
                    PADDLER_LOG_LEVEL="WARNING",
                    PADDLER_BUFFERED_REQUEST_TIMEOUT_MS="600000",
                )
            webs["prefix"].put_desired_state(
                {
                    "model": {"LocalToAgent": str(MODEL)},
                    "chat_template_override": {"content": GEMMA_CHAT_TEMPLATE},
                    "use_chat_template_override": True,
                    "inference_parameters": {
                        "temperature": 0.0,
                        "context_size": 2048,
                    },
                }
            )
            for run in range(args.runs):
                runs.append(one_run(run, webs, redis_server.url, tmp, args))
        finally:
            for web in webs.values():
                web.stop()
            stop_process(redis_server.process)
    keys = (
        "cached_share",
        "ttft_mean_ms",
        "ttft_median_ms",
        "ttft_p95_ms",
        "seconds",
        "ttft_mean_vs_least_busy",
        "ttft_p95_vs_least_busy",
    )
    medians = {
        policy: {key: median([run[policy][key] for run in runs]) for key in keys}
        for policy in POLICIES
    }
    prefix, least_busy = medians["prefix"], medians["least_busy"]
    report(
        name,
        title="Routing: conversation-aware against least-busy and round-robin "
        f"({args.conversations} conversations of {args.turns} turns, "
        f"{args.agents} agents of {args.slots} slot{'s' * (args.slots != 1)})",
        columns=[
            "policy",
            "prompt tokens from cache (turns 2+)",
            "TTFT mean (ms)",
            "TTFT p95 (ms)",
            "TTFT mean vs least-busy",
            "TTFT p95 vs least-busy",
            "wall (s)",
        ],
        rows=[
            [
                LABELS[policy],
                f"{r['cached_share']:.0%}",
                f"{r['ttft_mean_ms']:.0f}",
                f"{r['ttft_p95_ms']:.0f}",
                f"{r['ttft_mean_vs_least_busy']:.2f}x",
                f"{r['ttft_p95_vs_least_busy']:.2f}x",
                f"{r['seconds']:.1f}",
            ]
            for policy, r in medians.items()
        ],
        notes=[
            f"{args.conversations} conversations of {args.turns} turns, "
            + (
                "one system prompt shared by all"
                if args.system_prompt == "shared"
                else "each with a system prompt of its own"
            )
            + f", {args.agents} agents of {args.slots} slots started afresh for "
            f"every policy, each with {agent_threads(args.agents)} llama.cpp "
            f"thread(s), greedy, {args.tokens} tokens per answer, random "
            "pauses of 0 to 1.5 s between turns (seeded, the same for every "
            f"policy); median of {args.runs} runs, ratios against least-busy "
            "computed within each run.",
        ],
        goals=[
            goal(
                f"conversation-aware routing serves at least {CACHE_GOAL:.0%} of the "
                "prompt tokens of turns 2.. from cache (issue 4)",
                prefix["cached_share"] >= CACHE_GOAL,
                f"{prefix['cached_share']:.0%}, least-busy "
                f"{least_busy['cached_share']:.0%}",
            ),
            goal(
                "conversation-aware routing has a lower mean time to first token "
                "than least-busy",
                prefix["ttft_mean_vs_least_busy"] < 1.0,
                f"{prefix['ttft_mean_vs_least_busy']:.2f}x",
            ),
        ],
        data={"args": vars(args), "medians": medians, "runs": runs},
    )


if __name__ == "__main__":
    main()
