"""Dispatch capacity: how many tokens/s one web process relays, and two.

Agents run the synthetic backend (tokens without a model, as fast as they
can), so what is measured is the platform's own cost per token: the claim, the
agent's batching, Redis, the web process's relay and HTTP.  64 concurrent
NDJSON streams from a client in its own process; tokens per stream vary, and
the Redis messages per second must not grow with them (DESIGN.md: one message
per decode step and destination, not per token).

    .venv/bin/python -m bench.dispatch [--runs 3] [--profile]

``--profile`` needs py-spy (``.venv/bin/pip install -r bench/requirements.txt``).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import redis

from bench.common import goal, median, report
from tests.support.fleet import start_agent
from tests.support.processes import stop_process
from tests.support.redis_server import start_redis
from tests.support.web import start_web

STREAMS = 64
PROJECT_FRAME = re.compile(r"[(/](balancer|inference|agents|paddler_project)/")
TOKENS_GOAL = 10_000  # tokens/s one web process relays across 64 streams
FLAT_GOAL = 1.5  # messages/s at the most tokens per stream against the fewest
# The profile's load: 64 streams of this many tokens, enough to keep one web
# process busy well past the profile's window (about 10 s at 100,000 tokens/s).
PROFILE_TOKENS = 16_384
PROFILE_SECONDS = 6
COLUMNS = [
    "tokens/stream",
    "web replicas",
    "tokens/s",
    "requests/s",
    "Redis messages/s",
    "tokens per message",
    "vs 1 replica",
]


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


def profile_web(pid: int, seconds: int, output: Path) -> dict[str, list[str]]:
    """py-spy's samples of the web process: where its time goes.

    ``own``: the functions most often at the top of the stack; ``ours``: the
    functions of this project most often on it (a caller counts its callees).
    """
    beside = Path(sys.executable).parent / "py-spy"
    spy = str(beside) if beside.exists() else shutil.which("py-spy")
    if spy is None:
        message = "(py-spy is missing: .venv/bin/pip install -r bench/requirements.txt)"
        return {"own": [], "ours": [message]}
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
    if not output.exists():
        return {"own": [], "ours": ["(py-spy could not attach to the web process)"]}
    own: dict[str, int] = {}
    ours: dict[str, int] = {}
    samples = 0
    for line in output.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        # "function (path/file.py:line)": one entry per function, not per line.
        frames = [re.sub(r":\d+\)$", ")", frame) for frame in stack.split(";")]
        samples += int(count)
        own[frames[-1]] = own.get(frames[-1], 0) + int(count)
        for frame in set(frames):
            if PROJECT_FRAME.search(frame):
                ours[frame] = ours.get(frame, 0) + int(count)

    def ranked(counts: dict[str, int]) -> list[str]:
        top = sorted(counts.items(), key=lambda item: -item[1])[:25]
        return [f"{count / max(samples, 1):.0%} {frame}" for frame, count in top]

    return {"own": ranked(own), "ours": ranked(ours)}


def medians(runs: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per (tokens per stream, replicas): the median of every figure."""
    rows = []
    for index, first in enumerate(runs[0]):
        same = [run[index] for run in runs]
        rows.append(
            {
                **{key: first[key] for key in ("replicas", "tokens_per_stream")},
                **{
                    key: median([row[key] for row in same])
                    for key in first
                    if key not in ("replicas", "tokens_per_stream")
                },
            }
        )
    return rows


def table_rows(rows: list[dict[str, Any]]) -> list[list[Any]]:
    """The table's cells (``COLUMNS``) from the medians; "vs 1 replica" is
    tokens/s against one web process's at the same tokens per stream."""
    one = {
        r["tokens_per_stream"]: r["tokens_per_s"] for r in rows if r["replicas"] == 1
    }
    return [
        [
            r["tokens_per_stream"],
            r["replicas"],
            f"{r['tokens_per_s']:.0f}",
            f"{r['requests_per_s']:.1f}",
            f"{r['messages_per_s']:.0f}",
            f"{r['tokens_per_message']:.1f}",
            f"{r['tokens_per_s'] / one[r['tokens_per_stream']]:.2f}x",
        ]
        for r in rows
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", default="64,256,1024")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    runs: list[list[dict[str, Any]]] = []
    hot: dict[str, list[str]] = {"own": [], "ours": []}
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
            for run in range(args.runs):
                rows: list[dict[str, Any]] = []
                for tokens in (int(t) for t in args.tokens.split(",")):
                    for replicas in (1, 2):
                        row = measure(
                            [w.url for w in webs[:replicas]], tokens, redis_client
                        )
                        print(f"run {run + 1}", row, flush=True)
                        rows.append(row)
                runs.append(rows)
            if args.profile:
                manager = multiprocessing.Manager()
                result = manager.dict()
                load = multiprocessing.Process(
                    target=client,
                    args=([webs[0].url], STREAMS, PROFILE_TOKENS, result),
                )
                load.start()
                time.sleep(1)
                hot = profile_web(
                    webs[0].process.pid, PROFILE_SECONDS, tmp / "profile.txt"
                )
                load.join()
                print("\n".join(["own:", *hot["own"], "ours:", *hot["ours"]]))
        finally:
            for agent in agents:
                agent.stop()
            for web in webs:
                web.stop()
            stop_process(redis_server.process)
    rows = medians(runs)
    baseline = {r["tokens_per_stream"]: r for r in rows if r["replicas"] == 1}
    ones = sorted(baseline.values(), key=lambda r: r["tokens_per_stream"])
    flat = max(r["messages_per_s"] for r in ones) / min(
        r["messages_per_s"] for r in ones
    )

    report(
        "dispatch",
        title="Dispatch capacity (synthetic agents, 64 concurrent NDJSON streams)",
        columns=COLUMNS,
        rows=table_rows(rows),
        notes=[
            f"Median of {args.runs} runs.  Client, web processes, Redis and "
            "agents share the machine's cores.",
            *(
                [
                    f"Where one web process's time goes (py-spy, {STREAMS} streams "
                    f"of {PROFILE_TOKENS} tokens; share of samples at the top of "
                    "the stack): "
                    f"{'; '.join(hot['own'][:8])}",
                    "Our functions most often on its stack (with what they "
                    f"call): {'; '.join(hot['ours'][:8])}",
                ]
                if hot["own"]
                else hot["ours"][:1]
            ),
        ],
        goals=[
            goal(
                f"one web process relays at least {TOKENS_GOAL:,} tokens/s across "
                f"{STREAMS} concurrent streams of {ones[-1]['tokens_per_stream']} "
                "tokens",
                ones[-1]["tokens_per_s"] >= TOKENS_GOAL,
                ", ".join(
                    f"{r['tokens_per_s']:,.0f} at {r['tokens_per_stream']} "
                    "tokens/stream"
                    for r in ones
                ),
            ),
            goal(
                "Redis messages/s stay flat as tokens per stream rise (one web "
                f"process; most against fewest within {FLAT_GOAL}x)",
                flat <= FLAT_GOAL,
                ", ".join(
                    f"{r['messages_per_s']:,.0f}/s at {r['tokens_per_stream']}"
                    for r in ones
                )
                + f"; {flat:.2f}x",
            ),
        ],
        # The medians as figures, beside the table's cells ("rows"), which
        # they overwrote when they were stored under "rows" themselves.
        data={"args": vars(args), "medians": rows, "runs": runs, "profile": hot},
    )


if __name__ == "__main__":
    main()
