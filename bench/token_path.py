"""The token path: what each generated token costs our processes, this
checkout against a baseline checkout (``--base``, e.g. a worktree of main),
side by side in one run.

``model``: two stacks, each of its own Redis, daphne and one agent of 8 slots
with the demo model, one started from each checkout.  Per round, surface
(HTTP NDJSON, WebSocket, OpenAI SSE) and stream count (1, 8), the same
requests go to each stack in turn (the order alternates between rounds),
and the direct decode loop of ``bench.overhead`` runs the same prompts at 1
stream.  Figures: the CPU each process spends per generated token (web,
agent relay: the agent's event loop thread; agent engine: its other threads;
Redis), decode tokens/s against the direct loop, and the time to first token
added to the direct loop's.

``synthetic``: one synthetic agent (tokens without a model, as fast as it is
asked) of 64, 128 and 256 slots behind one daphne, per checkout; as many
streams as slots from a client in its own process.  Figures: tokens/s
delivered to the client, the CPU per token of the agent and the web
process, and Redis messages (pushes) per token as tokens per stream rise.
With ``--step-ms`` (this checkout only) the synthetic engine paces its steps
like a GPU's decode and logs how long its thread waited for the interpreter
lock after each.

``work``: the agent's per-token work between decode steps (``token_work``),
per checkout.

``idle``: one synthetic agent of 8 slots behind one daphne per checkout, both
stacks up at once: the CPU each process spends per second with nothing to do
(its timers and the fleet's heartbeats), then per token of one stream paced
like the demo model on this machine (``--step-ms``, 25 by default), where
that idle work is spread over few tokens.

    .venv/bin/python -m bench.token_path model --base ../tokpath-base
    .venv/bin/python -m bench.token_path synthetic --base ../tokpath-base
    .venv/bin/python -m bench.token_path work --base ../tokpath-base
    .venv/bin/python -m bench.token_path idle --base ../tokpath-base
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis
from websockets.asyncio.client import connect

from bench.common import MODEL, ROOT, goal, median, percentile, read_chunked, report
from bench.overhead import (
    Direct,
    Timing,
    equal_length_prompts,
    over_http,
    over_openai,
    over_socket,
)
from tests.support.constants import GREEDY_PARAMETERS
from tests.support.databases import web_database
from tests.support.processes import free_port, service_env, stop_process, wait_until
from tests.support.redis_server import RedisServer, start_redis
from tests.support.web import WebServer

SURFACES = ("http_ndjson", "websocket", "openai_sse")
LABELS = {
    "http_ndjson": "HTTP NDJSON",
    "websocket": "WebSocket",
    "openai_sse": "OpenAI SSE",
}
PARTS = ("web", "agent_relay", "agent_engine", "redis")
OURS = ("web", "agent_relay", "redis")
CPU_GOAL_MS = 0.5
RATIO_GOAL = 0.95
TTFT_GOAL_MS = 10.0
RELAY_GOAL = 20_000
WORK_GOAL_US = 20.0


def thread_cpu_ns(pid: int) -> dict[int, int]:
    """CPU time of each thread of a process in ns (schedstat: not in ticks)."""
    found: dict[int, int] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            found[int(tid)] = int(
                Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0]
            )
        except (OSError, ValueError):
            continue  # the thread ended
    return found


def thread_name(pid: int, tid: int) -> str:
    try:
        return Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
    except OSError:
        return ""


@dataclass
class Stack:
    """Redis, daphne and one agent, started from the checkout at ``root``."""

    label: str
    root: Path
    redis_server: RedisServer
    web: WebServer
    agent: subprocess.Popen[bytes]
    agent_log: Path
    extra: dict[str, Any] = field(default_factory=dict)

    def cpu(self) -> dict[str, float]:
        """Seconds of CPU so far, by part: the agent's relay is its event
        loop (the main thread) and, where it has one, its relay thread."""
        agent = thread_cpu_ns(self.agent.pid)
        relay = agent.get(self.agent.pid, 0) + sum(
            ns
            for tid, ns in agent.items()
            if thread_name(self.agent.pid, tid) == "paddler-relay"
        )
        return {
            "web": sum(thread_cpu_ns(self.web.process.pid).values()) / 1e9,
            "agent_relay": relay / 1e9,
            "agent_engine": (sum(agent.values()) - relay) / 1e9,
            "redis": sum(thread_cpu_ns(self.redis_server.process.pid).values()) / 1e9,
        }

    def pushes(self) -> int:
        client = redis.Redis(port=self.redis_server.port)
        try:
            stats = client.info("commandstats")
        finally:
            client.close()
        return int(stats.get("cmdstat_rpush", {}).get("calls", 0))

    def stop(self) -> None:
        stop_process(self.agent)
        self.web.stop()
        stop_process(self.redis_server.process)


def start_stack(
    label: str,
    root: Path,
    tmp: Path,
    state: dict[str, Any],
    *,
    slots: int,
    agent_args: tuple[str, ...] = (),
    agent_env: dict[str, str] | None = None,
) -> Stack:
    redis_server = start_redis()
    port = free_port()
    env = service_env(
        redis_server.url,
        DATABASE_URL=web_database(tmp, port),
        PADDLER_LOG_LEVEL="WARNING",
    )
    log = tmp / f"{label}-daphne.log"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "daphne",
            "-b",
            "127.0.0.1",
            "-p",
            str(port),
            "paddler_project.asgi:application",
        ],
        cwd=root,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    web = WebServer(f"http://127.0.0.1:{port}", process, env, log)

    def healthy() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"daphne exited: {log.read_text()[-2000:]}")
        return httpx.get(f"{web.url}/health", timeout=1).text == "OK"

    wait_until(healthy, 60, "daphne")
    web.put_desired_state(state)
    agent_log = tmp / f"{label}-agent.log"
    agent = subprocess.Popen(
        [
            sys.executable,
            "manage.py",
            "run_agent",
            "--name",
            label,
            "--slots",
            str(slots),
            *agent_args,
        ],
        cwd=root,
        env=service_env(
            redis_server.url, PADDLER_LOG_LEVEL="WARNING", **(agent_env or {})
        ),
        stdout=agent_log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        web.wait_for_ready_agents(1, timeout=180)
    except TimeoutError:
        raise RuntimeError(agent_log.read_text()[-3000:]) from None
    return Stack(label, root, redis_server, web, agent, agent_log)


def checkouts(base: Path) -> list[tuple[str, Path]]:
    if not (base / "manage.py").exists():
        raise SystemExit(f"--base {base}: not a checkout of this project")
    return [("base", base.resolve()), ("this", ROOT)]


@contextmanager
def running_stacks(
    base: Path,
    state: dict[str, Any],
    *,
    slots: int,
    suffix: str = "",
    agent_args: tuple[str, ...] = (),
    agent_env: dict[str, str] | None = None,
) -> Iterator[list[Stack]]:
    """One stack per checkout, base first, labelled by checkout and
    ``suffix``, in a temporary directory of their own; all stopped at the
    end, and those already up if one fails to start."""
    stacks: list[Stack] = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            for label, root in checkouts(base):
                stacks.append(
                    start_stack(
                        f"{label}{suffix}",
                        root,
                        Path(tmp),
                        state,
                        slots=slots,
                        agent_args=agent_args,
                        agent_env=agent_env,
                    )
                )
            yield stacks
        finally:
            for stack in stacks:
                stack.stop()


# ----------------------------------------------------------- model: per token
async def surface_block(
    stack: Stack, surface: str, prompts: list[str], tokens: int, streams: int
) -> tuple[list[Timing], dict[str, float], int]:
    """``prompts`` over ``surface``, ``streams`` at a time; the timings, the
    CPU each part spent, and the Redis pushes."""
    url = stack.web.url
    timings: list[Timing] = []
    groups = [prompts[i : i + streams] for i in range(0, len(prompts), streams)]
    async with httpx.AsyncClient(
        timeout=600, limits=httpx.Limits(max_connections=streams * 2)
    ) as client:
        if surface == "websocket":
            socket_url = url.replace("http://", "ws://", 1) + "/api/v1/inference_socket"
            sockets = [
                await connect(socket_url, max_size=None).__aenter__()
                for _ in range(streams)
            ]
            await over_socket(sockets[0], prompts[0], 4, "warm")
        else:
            over = over_http if surface == "http_ndjson" else over_openai
            await over(client, url, prompts[0], 4)
        await asyncio.sleep(0.3)  # llama.cpp's threads go back to sleep
        before, pushed = stack.cpu(), stack.pushes()
        for number, group in enumerate(groups):
            if surface == "websocket":
                runs = [
                    over_socket(sockets[i], prompt, tokens, f"r{number}-{i}")
                    for i, prompt in enumerate(group)
                ]
            else:
                runs = [over(client, url, prompt, tokens) for prompt in group]
            timings += await asyncio.gather(*runs)
        after, pushed = stack.cpu(), stack.pushes() - pushed
        if surface == "websocket":
            for socket in sockets:
                await socket.close()
    return timings, {p: after[p] - before[p] for p in PARTS}, pushed


def timing_summary(timings: list[Timing]) -> dict[str, float]:
    decoded = sum(t.tokens - 1 for t in timings)
    return {
        "tokens": sum(t.tokens for t in timings),
        "tokens_per_s": decoded / sum(t.decode_seconds for t in timings),
        "ttft_p50_ms": percentile([t.first * 1000 for t in timings], 0.5),
    }


def model_round(
    number: int,
    stacks: list[Stack],
    *,
    direct: Direct,
    prompts: list[str],
    tokens: int,
    stream_counts: list[int],
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    time.sleep(0.5)
    direct.generate(prompts[0], 4)
    results["direct"] = timing_summary(
        [direct.generate(prompt, tokens) for prompt in prompts]
    )
    order = stacks if number % 2 == 0 else stacks[::-1]
    for surface in SURFACES:
        for streams in stream_counts:
            for stack in order:
                chosen = prompts * max(1, streams // len(prompts))
                chosen = chosen[: max(len(prompts), streams)]
                timings, cpu, pushed = asyncio.run(
                    surface_block(stack, surface, chosen, tokens, streams)
                )
                made = sum(t.tokens for t in timings)
                entry: dict[str, Any] = {
                    **timing_summary(timings),
                    "cpu_ms_per_token": {p: cpu[p] * 1000 / made for p in PARTS},
                    "pushes_per_token": pushed / made,
                    "made": sorted({t.tokens for t in timings}),
                }
                entry["ours_ms_per_token"] = sum(
                    entry["cpu_ms_per_token"][p] for p in OURS
                )
                if streams == 1:
                    base = results["direct"]
                    entry["ratio"] = entry["tokens_per_s"] / base["tokens_per_s"]
                    entry["ttft_added_ms"] = entry["ttft_p50_ms"] - base["ttft_p50_ms"]
                results[f"{stack.label}/{surface}/{streams}"] = entry
                print(
                    f"round {number + 1} {stack.label:4} {LABELS[surface]:11} "
                    f"x{streams}: ours {entry['ours_ms_per_token']:.3f} ms/token "
                    + " ".join(f"{p} {entry['cpu_ms_per_token'][p]:.3f}" for p in PARTS)
                    + (
                        f" ratio {entry['ratio']:.3f} TTFT+ "
                        f"{entry['ttft_added_ms']:.1f} ms"
                        if streams == 1
                        else f" {entry['tokens_per_s']:.1f} tok/s"
                    ),
                    flush=True,
                )
    return results


def run_model(args: argparse.Namespace) -> None:
    threads = args.threads or os.cpu_count() or 1
    parameters = dict(GREEDY_PARAMETERS)
    state = {
        "model": {"LocalToAgent": str(MODEL)},
        "inference_parameters": parameters,
    }
    stream_counts = [int(n) for n in args.streams.split(",")]
    direct = Direct(parameters, threads)
    prompts = equal_length_prompts(direct, max(args.requests, *stream_counts))
    rounds: list[dict[str, Any]] = []
    with running_stacks(
        Path(args.base),
        state,
        slots=max(stream_counts),
        agent_args=("--threads", str(threads)),
    ) as stacks:
        for number in range(args.rounds):
            rounds.append(
                model_round(
                    number,
                    stacks,
                    direct=direct,
                    prompts=prompts[: args.requests],
                    tokens=args.tokens,
                    stream_counts=stream_counts,
                )
            )
    direct.close()
    keys = [k for k in rounds[0] if k != "direct"]

    def med(key: str, field_: str, part: str | None = None) -> float:
        values = [
            r[key][field_][part] if part else r[key][field_]
            for r in rounds
            if field_ in r[key]
        ]
        return median(values)

    rows = []
    for key in keys:
        label, surface, streams = key.split("/")
        rows.append(
            [
                LABELS[surface],
                streams,
                label,
                f"{med(key, 'ours_ms_per_token'):.3f}",
                *(f"{med(key, 'cpu_ms_per_token', p):.3f}" for p in PARTS),
                f"{med(key, 'pushes_per_token'):.2f}",
                f"{med(key, 'tokens_per_s'):.1f}",
                f"{med(key, 'ratio'):.3f}x" if streams == "1" else "",
                f"{med(key, 'ttft_added_ms'):+.1f}" if streams == "1" else "",
            ]
        )
    goals = []
    for surface in SURFACES:
        worst = max(
            med(f"this/{surface}/{n}", "ours_ms_per_token") for n in stream_counts
        )
        goals.append(
            goal(
                f"{LABELS[surface]}: at most {CPU_GOAL_MS} ms of our CPU per token "
                "(web + agent relay + Redis) at "
                f"{' and '.join(map(str, stream_counts))} streams",
                worst <= CPU_GOAL_MS,
                ", ".join(
                    f"{n}: {med(f'this/{surface}/{n}', 'ours_ms_per_token'):.3f} ms "
                    f"(base {med(f'base/{surface}/{n}', 'ours_ms_per_token'):.3f})"
                    for n in stream_counts
                ),
            )
        )
    # The direct loop is compared with one stream only.
    for surface in SURFACES if 1 in stream_counts else ():
        ratio = med(f"this/{surface}/1", "ratio")
        goals.append(
            goal(
                f"{LABELS[surface]}: at least {RATIO_GOAL}x the direct decode tokens/s",
                ratio >= RATIO_GOAL,
                f"{ratio:.3f}x (base {med(f'base/{surface}/1', 'ratio'):.3f}x)",
            )
        )
        added = med(f"this/{surface}/1", "ttft_added_ms")
        goals.append(
            goal(
                f"{LABELS[surface]}: under {TTFT_GOAL_MS:.0f} ms added to the first "
                "token (p50)",
                added < TTFT_GOAL_MS,
                f"{added:+.1f} ms "
                f"(base {med(f'base/{surface}/1', 'ttft_added_ms'):+.1f})",
            )
        )
    report(
        "token_path",
        title="The token path: CPU per generated token, this checkout against main",
        columns=[
            "surface",
            "streams",
            "code",
            "ours (ms/token)",
            "web",
            "agent relay",
            "agent engine",
            "Redis",
            "pushes/token",
            "decode tok/s",
            "vs direct",
            "TTFT added p50 (ms)",
        ],
        rows=rows,
        notes=[
            f"Greedy, {args.tokens} tokens per request, {args.requests} requests "
            f"per block, {args.rounds} rounds, medians; 'base' is a checkout of "
            "main, 'this' the branch, both running at once (each its own Redis, "
            "daphne and agent of "
            f"{max(stream_counts)} slots, llama.cpp on {threads} threads), asked "
            "in turn, the order alternating between rounds.",
            "CPU per token: each process's CPU time (schedstat) during the block "
            "over the tokens made; 'ours' is web + agent relay (the agent's "
            "event loop thread, and on this branch its relay thread) + Redis; "
            "'agent engine' is the engine thread and llama.cpp's.",
            "vs direct and TTFT added: against bench.overhead's direct decode "
            "loop in the benchmark's process, same prompts, same round, 1 stream.",
        ],
        goals=goals,
        data={"args": vars(args), "rounds": rounds},
    )


# ------------------------------------------------------- synthetic: one agent
def drive(url: str, streams: int, tokens: int, result: Any) -> None:
    """Runs in its own process: ``streams`` NDJSON streams, count what comes.

    A bare HTTP/1.1 client on asyncio streams, not httpx: it only joins the
    chunks and counts the tokens in them, so that what is measured is the
    stack, not the client.  (httpx spent 3.1 s of CPU reading 256 streams of 128
    tokens in a 4.4 s run on the 2-core machine, and capped the figure.)
    """
    host, port = url.removeprefix("http://").rsplit(":", 1)
    request = json.dumps({"raw_prompt": "x", "max_tokens": tokens}).encode()
    head = (
        "POST /api/v1/continue_from_raw_prompt HTTP/1.1\r\n"
        f"Host: {host}:{port}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(request)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()

    async def one() -> int:
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(head + request)
        try:
            await reader.readuntil(b"\r\n\r\n")  # the status line, headers
            body = await read_chunked(reader)
        finally:
            writer.close()
        return body.count(b"ContentToken")

    async def main() -> tuple[int, float]:
        started = time.perf_counter()
        counts = await asyncio.gather(*(one() for _ in range(streams)))
        return sum(counts), time.perf_counter() - started

    cpu = time.process_time()
    received, seconds = asyncio.run(main())
    result["tokens"] = received
    result["seconds"] = seconds
    result["client_cpu_s"] = time.process_time() - cpu


def synthetic_block(stack: Stack, streams: int, tokens: int) -> dict[str, Any]:
    manager = multiprocessing.Manager()
    result = manager.dict()
    before, pushed = stack.cpu(), stack.pushes()
    process = multiprocessing.Process(
        target=drive, args=(stack.web.url, streams, tokens, result)
    )
    process.start()
    process.join()
    after, pushed = stack.cpu(), stack.pushes() - pushed
    made = int(result["tokens"])
    seconds = float(result["seconds"])
    client_cpu_s = float(result["client_cpu_s"])
    manager.shutdown()
    return {
        "tokens": made,
        "expected": streams * tokens,
        "tokens_per_s": made / seconds,
        "pushes_per_token": pushed / max(made, 1),
        "pushes_per_s": pushed / seconds,
        "cpu_us_per_token": {
            p: (after[p] - before[p]) * 1e6 / max(made, 1) for p in PARTS
        },
        "agent_cpu_share": (
            (after["agent_relay"] - before["agent_relay"])
            + (after["agent_engine"] - before["agent_engine"])
        )
        / seconds,
        "web_cpu_share": (after["web"] - before["web"]) / seconds,
        "client_cpu_share": client_cpu_s / seconds,
    }


def run_synthetic(args: argparse.Namespace) -> None:
    slot_counts = [int(n) for n in args.slots.split(",")]
    token_counts = [int(n) for n in args.tokens.split(",")]
    state = {"model": "None", "inference_parameters": dict(GREEDY_PARAMETERS)}
    results: dict[str, list[dict[str, Any]]] = {}
    for slots in slot_counts:
        with running_stacks(
            Path(args.base),
            state,
            slots=slots,
            suffix=f"-{slots}",
            agent_args=("--backend", "synthetic"),
        ) as stacks:
            for number in range(args.rounds):
                order = stacks if number % 2 == 0 else stacks[::-1]
                for tokens in token_counts:
                    for stack in order:
                        label = stack.label.split("-")[0]
                        entry = synthetic_block(stack, slots, tokens)
                        key = f"{label}/{slots}/{tokens}"
                        results.setdefault(key, []).append(entry)
                        print(
                            f"round {number + 1} {key}: "
                            f"{entry['tokens_per_s']:,.0f} tok/s, "
                            f"{entry['pushes_per_token']:.3f} pushes/token, "
                            "us/token "
                            + " ".join(
                                f"{p} {entry['cpu_us_per_token'][p]:.1f}" for p in PARTS
                            ),
                            flush=True,
                        )
    gil = run_gil(args) if args.step_ms else {}

    def med(key: str, field_: str, part: str | None = None) -> float:
        return median([e[field_][part] if part else e[field_] for e in results[key]])

    rows = []
    for key, entries in results.items():
        label, slots_, tokens_ = key.split("/")
        rows.append(
            [
                slots_,
                tokens_,
                label,
                f"{med(key, 'tokens_per_s'):,.0f}",
                f"{min(e['tokens'] / e['expected'] for e in entries):.0%}",
                f"{med(key, 'client_cpu_share'):.0%}",
                f"{med(key, 'pushes_per_token'):.3f}",
                f"{med(key, 'pushes_per_s'):,.0f}",
                *(f"{med(key, 'cpu_us_per_token', p):.1f}" for p in PARTS),
            ]
        )
    top = max(token_counts)
    goals = [
        goal(
            f"one agent process relays and one web process delivers at least "
            f"{RELAY_GOAL:,} tokens/s ({top} tokens per stream, as many streams "
            "as slots)",
            all(
                med(f"this/{n}/{top}", "tokens_per_s") >= RELAY_GOAL
                for n in slot_counts
            ),
            ", ".join(
                f"{n} slots: {med(f'this/{n}/{top}', 'tokens_per_s'):,.0f} "
                f"(base {med(f'base/{n}/{top}', 'tokens_per_s'):,.0f})"
                for n in slot_counts
            ),
        )
    ]
    notes = [
        f"{args.rounds} rounds, medians; base and this running at once, asked in "
        "turn.  The synthetic engine emits one token per active slot and step as "
        "fast as it is asked; the client (its own process, a bare HTTP client "
        "on asyncio streams) opens every stream at once and counts the tokens.",
        "received: the share of the tokens asked for that arrived, in the worst "
        "round (a request refused, e.g. 503, brings none); client CPU: the "
        "client process's CPU over the run's time, to show it did not cap "
        "the figure.",
        "tokens/s: what the client received over the time from its first "
        "request to its last line; CPU per token in us (schedstat) of the web "
        "process, the agent's event loop thread (relay), its engine thread, "
        "Redis.  pushes: RPUSH commands (messages to the web tier).",
    ]
    if gil:
        notes.append(
            "Engine thread waiting for the interpreter lock after a paced decode "
            f"step of {args.step_ms} ms (this checkout; how late the step came "
            "back, as the synthetic engine logs it; timer slack included): "
            + "; ".join(f"{k}: {v}" for k, v in gil.items())
        )
    report(
        "token_path_synthetic",
        title="The token path: one synthetic agent and one web process, this "
        "checkout against main",
        columns=[
            "slots",
            "tokens/stream",
            "code",
            "tokens/s",
            "received (worst round)",
            "client CPU",
            "pushes/token",
            "pushes/s",
            *(f"{p} us/token" for p in PARTS),
        ],
        rows=rows,
        notes=notes,
        goals=goals,
        data={"args": vars(args), "results": results, "gil": gil},
    )


LATE = re.compile(r"active (\d+), late by p50 ([\d.]+) us, p99 ([\d.]+) us")


def run_gil(args: argparse.Namespace) -> dict[str, str]:
    """This checkout's synthetic agent paced like a GPU: how late its steps
    came back, at each slot count."""
    state = {"model": "None", "inference_parameters": dict(GREEDY_PARAMETERS)}
    found: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for slots in [1, *[int(n) for n in args.slots.split(",")]]:
            stack = start_stack(
                f"gil-{slots}",
                ROOT,
                Path(tmp),
                state,
                slots=slots,
                agent_args=("--backend", "synthetic"),
                agent_env={"PADDLER_SYNTHETIC_STEP_MS": str(args.step_ms)},
            )
            try:
                steps = max(int(3000 / args.step_ms), 100)
                entry = synthetic_block(stack, slots, steps)
                time.sleep(0.2)
                lines = [
                    LATE.search(line)
                    for line in stack.agent_log.read_text().splitlines()
                ]
                late = [m for m in lines if m and int(m.group(1)) == slots]
                found[f"{slots} slots"] = (
                    f"p50 {median([float(m.group(2)) for m in late]):.0f} us, "
                    f"p99 {median([float(m.group(3)) for m in late]):.0f} us "
                    f"({entry['tokens_per_s']:,.0f} tok/s)"
                    if late
                    else "(no report)"
                )
                print(f"GIL wait at {slots} slots: {found[f'{slots} slots']}")
            finally:
                stack.stop()
    return found


# ------------------------------------------------------------ work: per token
def run_work(args: argparse.Namespace) -> None:
    script = ROOT / "bench" / "token_work.py"
    results: dict[str, list[dict[str, Any]]] = {}
    for number in range(args.rounds):
        pairs = checkouts(Path(args.base))
        for label, root in pairs if number % 2 == 0 else pairs[::-1]:
            for stop in (False, True):
                done = subprocess.run(
                    [
                        sys.executable,
                        str(script),
                        "--slots",
                        str(args.work_slots),
                        *(["--stop"] if stop else []),
                    ],
                    cwd=root,
                    env={**os.environ, "PYTHONPATH": str(root)},
                    check=True,
                    capture_output=True,
                    text=True,
                )
                key = f"{label}/{'stop' if stop else 'plain'}"
                results.setdefault(key, []).append(json.loads(done.stdout))
                print(key, done.stdout.strip(), flush=True)
    rows = [
        [
            key.split("/")[0],
            key.split("/")[1],
            f"{median([r['cpu_us_per_token'] for r in runs]):.2f}",
            f"{median([r['bytes_per_token'] for r in runs]):.1f}",
        ]
        for key, runs in results.items()
    ]
    this = median([r["cpu_us_per_token"] for r in results["this/plain"]])
    base = median([r["cpu_us_per_token"] for r in results["base/plain"]])
    report(
        "token_path_work",
        title=f"The agent's work per token between decode steps, {args.work_slots} "
        "active slots",
        columns=["code", "requests", "CPU us/token", "JSON bytes/token to Redis"],
        rows=rows,
        notes=[
            "bench/token_work.py in each checkout: Engine._sample's work after "
            "sampling (token bytes from the vocabulary, detokenising, stop "
            "sequences, the output splitter, the output item) and the relay's "
            "batch JSON, one token for each slot per step; 'stop': each request "
            f"has a stop sequence.  Median of {args.rounds} runs each.",
        ],
        goals=[
            goal(
                f"at most {WORK_GOAL_US:.0f} us of agent work per token at "
                f"{args.work_slots} slots (plain requests)",
                this <= WORK_GOAL_US,
                f"{this:.2f} us (base {base:.2f})",
            )
        ],
        data={"args": vars(args), "results": results},
    )


# ------------------------------------------------ idle: CPU with nothing to do
IDLE_PARTS = ("web", "agent_relay", "agent_engine", "redis")


def idle_block(stacks: list[Stack], seconds: float) -> dict[str, dict[str, float]]:
    """Each stack's CPU per second, by part, over the same ``seconds``."""
    before = [stack.cpu() for stack in stacks]
    time.sleep(seconds)
    after = [stack.cpu() for stack in stacks]
    return {
        stack.label: {
            part: (end[part] - start[part]) * 1e6 / seconds for part in IDLE_PARTS
        }
        for stack, start, end in zip(stacks, before, after, strict=True)
    }


def run_idle(args: argparse.Namespace) -> None:
    state = {"model": "None", "inference_parameters": dict(GREEDY_PARAMETERS)}
    step_ms = args.step_ms or 25.0
    tokens = max(int(10_000 / step_ms), 100)  # about 10 s of one stream
    idle: dict[str, list[dict[str, float]]] = {}
    paced: dict[str, list[dict[str, Any]]] = {}
    with running_stacks(
        Path(args.base),
        state,
        slots=8,
        agent_args=("--backend", "synthetic"),
        agent_env={"PADDLER_SYNTHETIC_STEP_MS": str(step_ms)},
    ) as stacks:
        for stack in stacks:  # every background task started
            synthetic_block(stack, 1, 16)
        for number in range(args.rounds):
            time.sleep(2)  # past the warm-up's own tail
            for label, figures in idle_block(stacks, args.idle_s).items():
                idle.setdefault(label, []).append(figures)
                print(
                    f"round {number + 1} {label} idle us/s: "
                    + " ".join(f"{p} {figures[p]:.0f}" for p in IDLE_PARTS),
                    flush=True,
                )
            order = stacks if number % 2 == 0 else stacks[::-1]
            for stack in order:
                entry = synthetic_block(stack, 1, tokens)
                paced.setdefault(stack.label, []).append(entry)
                print(
                    f"round {number + 1} {stack.label} one stream us/token: "
                    + " ".join(
                        f"{p} {entry['cpu_us_per_token'][p]:.0f}" for p in PARTS
                    ),
                    flush=True,
                )

    def idle_median(label: str, part: str) -> float:
        return median([figures[part] for figures in idle[label]])

    def paced_median(label: str, part: str) -> float:
        return median([e["cpu_us_per_token"][part] for e in paced[label]])

    rows = [
        [
            "base" if label == "base" else "this checkout",
            *[f"{idle_median(label, part):,.0f}" for part in IDLE_PARTS],
            f"{sum(idle_median(label, part) for part in OURS):,.0f}",
            f"{sum(paced_median(label, part) for part in OURS):,.0f}",
        ]
        for label in ("base", "this")
    ]
    report(
        "token_path_idle",
        title="CPU with nothing to do, and per token of one paced stream",
        columns=[
            "code",
            *[f"{p.replace('_', ' ')} idle (us/s)" for p in IDLE_PARTS],
            "ours idle (us/s)",
            f"ours per token, 1 stream at {step_ms:g} ms/step (us)",
        ],
        rows=rows,
        notes=[
            "One synthetic agent of 8 slots behind one daphne and one Redis per "
            "checkout, both stacks up at once. Idle: each process's CPU time "
            f"(schedstat) over {args.idle_s:g} s with no request, per second. "
            f"Per token: one stream of {tokens} tokens, the synthetic engine "
            f"pacing its steps at {step_ms:g} ms (about the demo model's decode "
            "here); 'ours' is web + agent relay (event loop and relay thread) + "
            f"Redis. Medians of {args.rounds} rounds; the streams alternate "
            "their order between rounds.",
        ],
        data={"args": vars(args), "idle": idle, "paced": paced},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("part", choices=("model", "synthetic", "work", "idle"))
    parser.add_argument("--base", required=True, help="a checkout of the baseline")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=3, help="model: per block")
    parser.add_argument("--tokens", default=None, help="model: 64; synthetic: 128,512")
    parser.add_argument("--streams", default="1,8", help="model")
    parser.add_argument("--threads", type=int, default=None, help="model")
    parser.add_argument("--slots", default="64,128,256", help="synthetic")
    parser.add_argument(
        "--step-ms",
        type=float,
        default=0.0,
        help="synthetic: paced steps too; idle: the paced stream's (25)",
    )
    parser.add_argument("--work-slots", type=int, default=64, help="work")
    parser.add_argument("--idle-s", type=float, default=10.0, help="idle")
    args = parser.parse_args()
    # A benchmark stopped with SIGTERM stops the stacks it started too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.part == "model":
        args.tokens = int(args.tokens or 64)
        run_model(args)
    elif args.part == "synthetic":
        args.tokens = args.tokens or "128,512"
        run_synthetic(args)
    elif args.part == "idle":
        run_idle(args)
    else:
        run_work(args)


if __name__ == "__main__":
    main()
