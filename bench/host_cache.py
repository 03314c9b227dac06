"""The host-memory tier of the KV cache, off against on, in one run.

More live conversations than slots: by default 16 and 32 conversations of 6
turns, one system prompt shared by all, over 2 agents of 4 slots, with
conversation-aware routing.  A freed slot is taken by the next request at
once, so without the tier an earlier conversation's cache is gone when its
next turn comes; with it, the agent saved it to host memory first and
restores it.  Each scenario runs with the tier off (``--cache-ram-mb 0``) and
on, on freshly started agents, with the very same conversations (the order
alternates between runs).  Figures: the share of the prompt tokens of turns
2.. served from cache (slot or restored), and the time to first token of
those turns (mean, p95), the tier's against the tier-off run's.

    .venv/bin/python -m bench.host_cache
    .venv/bin/python -m bench.host_cache --scenarios 16x6 --runs 1 --tokens 8
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import redis

from balancer import keys
from balancer.chat_template import GEMMA_CHAT_TEMPLATE
from bench.common import MODEL, goal, median, percentile, report
from bench.routing import SYSTEM_PROMPT, TOPICS, agent_threads, wait_for_fleet
from bench.routing import conversation as routing_conversation
from tests.support.fleet import start_agent
from tests.support.processes import stop_process
from tests.support.redis_server import start_redis
from tests.support.web import start_web

CACHE_GOAL = 0.9
DEFAULT_SCENARIOS = ["16x6", "32x6"]
TTFT_GOAL = 0.5
TIERS = {"off": "0", "on": "1024"}
# On a loaded shared machine an agent's heartbeat can lag seconds behind: a
# long TTL keeps a slow agent from being dropped mid-run.
AGENT_TTL_MS = "30000"


def conversation_topic(index: int) -> str:
    return TOPICS[index % len(TOPICS)] + ("" if index < len(TOPICS) else f" ({index})")


async def conversation(
    client: httpx.AsyncClient, url: str, *, index: int, turns: int, tokens: int
) -> list[dict[str, Any]]:
    """One conversation; per turn its usage and time to first token.

    Pauses between turns are seeded by the conversation's index, the same
    with the tier off and on.
    """
    return await routing_conversation(
        client,
        url,
        topic=conversation_topic(index),
        system_prompt=SYSTEM_PROMPT,
        turns=turns,
        tokens=tokens,
        seed=index,
    )


def why_kind(why: str) -> str:
    """The routing decision's kind, from the request log's words."""
    for start, kind in (
        ("slot cache match", "slot"),
        ("host-tier cache match", "host-tier"),
        ("first free slot", "first free"),
    ):
        if why.startswith(start):
            return kind
    return "least busy"


def breakdown(redis_url: str, later: list[dict[str, Any]]) -> dict[str, Any]:
    """Where the later turns' time to first token went, from the request
    log: waiting in the buffer for a slot, and from the claim to the first
    token (the agent's preparing, admitting and evaluating); how long each
    held its slot; and where routing sent them."""
    client = redis.Redis.from_url(redis_url)
    try:
        records = {
            record["id"]: record
            for record in (
                json.loads(raw) for raw in client.lrange(keys.request_log(), 0, -1)
            )
        }
    finally:
        client.close()
    found = [records[t["request_id"]] for t in later if t["request_id"] in records]
    if not found:
        return {}
    waits = [r["queue_wait_ms"] for r in found]
    after_claim = [
        r["time_to_first_token_ms"] - r["queue_wait_ms"]
        for r in found
        if r["time_to_first_token_ms"] is not None
    ]
    held = [r["duration_ms"] - r["queue_wait_ms"] for r in found]
    kinds: dict[str, int] = {}
    for record in found:
        kind = why_kind(record["why"])
        kinds[kind] = kinds.get(kind, 0) + 1
    return {
        "queue_wait_mean_ms": sum(waits) / len(waits),
        "claim_to_first_token_mean_ms": sum(after_claim) / max(1, len(after_claim)),
        "slot_held_mean_ms": sum(held) / len(held),
        "routed": kinds,
    }


async def workload(
    url: str, conversations: int, turns: int, tokens: int
) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=900) as client:
        started = time.perf_counter()
        outcomes = await asyncio.gather(
            *(
                conversation(client, url, index=i, turns=turns, tokens=tokens)
                for i in range(conversations)
            )
        )
        elapsed = time.perf_counter() - started
    later = [t for outcome in outcomes for t in outcome if t["turn"] > 0]
    ttfts = [t["ttft"] * 1000 for t in later if t["ttft"] is not None]
    return {
        "cached_share": sum(t["cached_prompt_tokens"] for t in later)
        / max(1, sum(t["prompt_tokens"] for t in later)),
        "later_ttft_mean_ms": sum(ttfts) / len(ttfts),
        "later_ttft_p95_ms": percentile(ttfts, 0.95),
        "seconds": elapsed,
        "later": later,
    }


def host_tiers(redis_url: str) -> list[dict[str, Any]]:
    """What the agents report of their host tiers, read from their status in
    Redis (the management API shows Paddler's fields only)."""
    client = redis.Redis.from_url(redis_url)
    try:
        tiers = []
        members: set[bytes] = client.smembers(keys.agents_set())  # type: ignore[assignment]
        for member in members:
            raw: bytes | None = client.get(keys.agent_status(member.decode()))  # type: ignore[assignment]
            if raw is not None:
                report = json.loads(raw)
                tier = dict(report.get("host_cache", {}))
                tier.pop("prefixes", None)
                tiers.append(tier)
        return tiers
    finally:
        client.close()


def one_run(
    run: int,
    *,
    scenario: tuple[int, int],
    web: Any,
    redis_url: str,
    tmp: Path,
    args: argparse.Namespace,
) -> dict[str, dict[str, Any]]:
    conversations, turns = scenario
    order = ["off", "on"] if run % 2 == 0 else ["on", "off"]
    results: dict[str, dict[str, Any]] = {}
    for tier in order:
        names = [f"{tier}-{conversations}-{run}-{i}" for i in range(args.agents)]
        threads = str(agent_threads(args.agents))
        agents = [
            start_agent(
                redis_url,
                tmp,
                name,
                args.slots,
                "--threads",
                threads,
                "--cache-ram-mb",
                TIERS[tier],
                env={"PADDLER_AGENT_TTL_MS": AGENT_TTL_MS},
            )
            for name in names
        ]
        try:
            wait_for_fleet(web, names)
            results[tier] = asyncio.run(
                workload(web.url, conversations, turns, args.tokens)
            )
            later = results[tier].pop("later")
            results[tier]["breakdown"] = breakdown(redis_url, later)
            # The agents' own figures: hits, bytes, the slowest copies.
            time.sleep(1.5)
            results[tier]["host_tiers"] = host_tiers(redis_url)
        finally:
            for agent in agents:
                agent.stop()
        print(f"{conversations}x{turns} run {run + 1} tier {tier}", results[tier])
    off = results["off"]
    for result in results.values():
        result["ttft_mean_vs_off"] = (
            result["later_ttft_mean_ms"] / off["later_ttft_mean_ms"]
        )
        result["ttft_p95_vs_off"] = (
            result["later_ttft_p95_ms"] / off["later_ttft_p95_ms"]
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--scenarios",
        nargs="+",
        default=DEFAULT_SCENARIOS,
        help="conversations x turns",
    )
    parser.add_argument("--agents", type=int, default=2)
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=16, help="per answer")
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    scenarios = [
        (int(text.split("x")[0]), int(text.split("x")[1])) for text in args.scenarios
    ]
    medians: dict[str, dict[str, dict[str, float]]] = {}
    raw: dict[str, list[dict[str, dict[str, Any]]]] = {}
    figures = (
        "cached_share",
        "later_ttft_mean_ms",
        "later_ttft_p95_ms",
        "seconds",
        "ttft_mean_vs_off",
        "ttft_p95_vs_off",
    )
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        redis_server = start_redis()
        web = start_web(
            redis_server.url,
            tmp,
            PADDLER_LOG_LEVEL="WARNING",
            PADDLER_BUFFERED_REQUEST_TIMEOUT_MS="900000",
            PADDLER_INFERENCE_ITEM_TIMEOUT_MS="900000",
            PADDLER_AGENT_TTL_MS=AGENT_TTL_MS,
        )
        try:
            web.put_desired_state(
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
            for scenario in scenarios:
                label = f"{scenario[0]}x{scenario[1]}"
                raw[label] = [
                    one_run(
                        run,
                        scenario=scenario,
                        web=web,
                        redis_url=redis_server.url,
                        tmp=tmp,
                        args=args,
                    )
                    for run in range(args.runs)
                ]
                medians[label] = {
                    tier: {
                        key: median([run[tier][key] for run in raw[label]])
                        for key in figures
                    }
                    for tier in TIERS
                }
        finally:
            web.stop()
            stop_process(redis_server.process)
    rows = []
    goals = []
    for label, by_tier in medians.items():
        for tier, r in by_tier.items():
            rows.append(
                [
                    label,
                    tier,
                    f"{r['cached_share']:.0%}",
                    f"{r['later_ttft_mean_ms']:.0f}",
                    f"{r['later_ttft_p95_ms']:.0f}",
                    f"{r['ttft_mean_vs_off']:.2f}x",
                    f"{r['ttft_p95_vs_off']:.2f}x",
                    f"{r['seconds']:.1f}",
                ]
            )
        on = by_tier["on"]
        goals.append(
            goal(
                f"{label}: with the tier on, at least {CACHE_GOAL:.0%} of the "
                "prompt tokens of turns 2.. from cache",
                on["cached_share"] >= CACHE_GOAL,
                f"{on['cached_share']:.0%}, off {by_tier['off']['cached_share']:.0%}",
            )
        )
        goals.append(
            goal(
                f"{label}: later-turn mean TTFT at most {TTFT_GOAL}x the "
                "tier-off run's",
                on["ttft_mean_vs_off"] <= TTFT_GOAL,
                f"{on['ttft_mean_vs_off']:.2f}x",
            )
        )
    name = (
        "host_cache"
        if args.scenarios == DEFAULT_SCENARIOS
        else f"host_cache-{'-'.join(args.scenarios)}"
    )
    report(
        name,
        title="Host-memory KV tier: off against on "
        f"({', '.join(args.scenarios)} conversations x turns, "
        f"{args.agents} agents of {args.slots} slots)",
        columns=[
            "conversations x turns",
            "tier",
            "prompt tokens from cache (turns 2+)",
            "later-turn TTFT mean (ms)",
            "later-turn TTFT p95 (ms)",
            "mean vs off",
            "p95 vs off",
            "wall (s)",
        ],
        rows=rows,
        notes=[
            "One system prompt shared by all conversations, conversation-aware "
            f"routing, {args.agents} agents of {args.slots} slots started afresh "
            "for each tier setting, each with "
            f"{agent_threads(args.agents)} llama.cpp thread(s), greedy, "
            f"{args.tokens} tokens per answer, random pauses of 0 to 1.5 s "
            "between turns (seeded, the same for both settings); tier on is "
            f"--cache-ram-mb {TIERS['on']}; median of {args.runs} run(s), "
            "ratios computed within each run.",
            "Against llama-server's own prompt cache on the same "
            "conversations: bench.llama_server_cache.",
        ],
        goals=goals,
        data={"args": vars(args), "medians": medians, "runs": raw},
    )


if __name__ == "__main__":
    main()
