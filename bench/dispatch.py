"""Dispatch capacity: how many tokens/s one web process relays, and two.

Agents run the synthetic backend (tokens without a model, as fast as they
can), so what is measured is the platform's own cost per token: the claim, the
agent's batching, Redis, the web process's relay and HTTP.  64 concurrent
NDJSON streams from a client in its own process; tokens per stream vary, and
the Redis messages per second must not grow with them (DESIGN.md: one message
per decode step and destination, not per token).

    .venv/bin/python -m bench.dispatch [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import redis

from bench.common import ROOT, report
from tests.conftest import start_agent, start_redis, start_web, stop_process

STREAMS = 64


def client(urls: list[str], streams: int, tokens: int, result: Any) -> None:
    """Runs in its own process: drive the streams, count what arrives."""

    async def one(http: httpx.AsyncClient, url: str) -> int:
        received = 0
        async with http.stream(
            "POST",
            f"{url}/api/v1/continue_from_raw_prompt",
            json={"raw_prompt": "x", "max_tokens": tokens},
        ) as response:
            async for line in response.aiter_lines():
                if "ContentToken" in line:
                    received += 1
        return received

    async def main() -> tuple[int, float]:
        limits = httpx.Limits(max_connections=streams * 2)
        async with httpx.AsyncClient(timeout=600, limits=limits) as http:
            started = time.perf_counter()
            counts = await asyncio.gather(
                *(one(http, urls[i % len(urls)]) for i in range(streams))
            )
            return sum(counts), time.perf_counter() - started

    received, seconds = asyncio.run(main())
    result["tokens"] = received
    result["seconds"] = seconds


def rpush_calls(client_: redis.Redis) -> int:
    stats = client_.info("commandstats")
    return int(stats.get("cmdstat_rpush", {}).get("calls", 0))


def measure(urls: list[str], tokens: int, redis_client: redis.Redis) -> dict[str, Any]:
    manager = multiprocessing.Manager()
    result = manager.dict()
    before = rpush_calls(redis_client)
    process = multiprocessing.Process(
        target=client, args=(urls, STREAMS, tokens, result)
    )
    process.start()
    process.join()
    messages = rpush_calls(redis_client) - before
    seconds = result["seconds"]
    return {
        "replicas": len(urls),
        "tokens_per_stream": tokens,
        "tokens": result["tokens"],
        "seconds": seconds,
        "tokens_per_s": result["tokens"] / seconds,
        "requests_per_s": STREAMS / seconds,
        "messages_per_s": messages / seconds,
        "tokens_per_message": result["tokens"] / max(messages, 1),
    }


def profile_web(pid: int, seconds: int, output: Path) -> list[str]:
    spy = shutil.which("py-spy") or str(ROOT / "var" / "bench-venv" / "bin" / "py-spy")
    if not Path(spy).exists():
        return ["(py-spy not installed: var/bench-venv/bin/pip install py-spy)"]
    subprocess.run(
        [
            spy,
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(seconds),
            "--format",
            "raw",
            "--output",
            str(output),
            "--nonblocking",
        ],
        check=False,
        capture_output=True,
    )
    totals: dict[str, int] = {}
    for line in output.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        for frame in set(stack.split(";")):
            totals[frame] = totals.get(frame, 0) + int(count)
    grand = max(totals.values(), default=1)
    ranked = sorted(totals.items(), key=lambda item: -item[1])
    return [f"{count / grand:.0%} {frame}" for frame, count in ranked[:25]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", default="64,256,1024")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    hot: list[str] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        redis_server = start_redis()
        quiet = {"PADDLER_LOG_LEVEL": "WARNING", "PADDLER_REQUEST_LOG_SIZE": "0"}
        webs = [start_web(redis_server.url, tmp, **quiet) for _ in range(2)]
        webs[0].put_desired_state({"model": "None"})
        agents = [
            start_agent(
                redis_server.url,
                tmp,
                f"synthetic-{i}",
                STREAMS // 2,
                "--backend",
                "synthetic",
            )
            for i in range(2)
        ]
        redis_client = redis.Redis(port=redis_server.port)
        try:
            webs[0].wait_for_ready_agents(2)
            measure([webs[0].url], 16, redis_client)  # warm-up
            for tokens in (int(t) for t in args.tokens.split(",")):
                for replicas in (1, 2):
                    row = measure(
                        [w.url for w in webs[:replicas]], tokens, redis_client
                    )
                    print(row, flush=True)
                    rows.append(row)
            if args.profile:
                manager = multiprocessing.Manager()
                result = manager.dict()
                load = multiprocessing.Process(
                    target=client, args=([webs[0].url], STREAMS, 4096, result)
                )
                load.start()
                time.sleep(2)
                hot = profile_web(webs[0].process.pid, 8, tmp / "profile.txt")
                load.join()
                print("\n".join(hot))
        finally:
            for agent in agents:
                agent.stop()
            for web in webs:
                web.stop()
            stop_process(redis_server.process)
    baseline = {r["tokens_per_stream"]: r for r in rows if r["replicas"] == 1}

    def one_replica(row: dict[str, Any]) -> dict[str, Any]:
        return baseline[row["tokens_per_stream"]]

    report(
        "dispatch",
        title="Dispatch capacity (synthetic agents, 64 concurrent NDJSON streams)",
        columns=[
            "tokens/stream",
            "web replicas",
            "tokens/s",
            "requests/s",
            "Redis messages/s",
            "tokens per message",
            "vs 1 replica",
        ],
        rows=[
            [
                r["tokens_per_stream"],
                r["replicas"],
                f"{r['tokens_per_s']:.0f}",
                f"{r['requests_per_s']:.1f}",
                f"{r['messages_per_s']:.0f}",
                f"{r['tokens_per_message']:.1f}",
                f"{r['tokens_per_s'] / one_replica(r)['tokens_per_s']:.2f}x",
            ]
            for r in rows
        ],
        notes=[
            "Client, web processes, Redis and agents share the same 2 cores.",
            *(
                [f"Top of the web process's profile (py-spy): {', '.join(hot[:8])}"]
                if hot
                else []
            ),
        ],
        data={"rows": rows, "profile": hot},
    )


if __name__ == "__main__":
    main()
