"""What one Redis command costs a web process, with and without
``balancer.redis_writes`` (redis-py's write under ``asyncio.wait_for``, a task
per command on Python 3.11, against the write made at once).

One process, one Redis of its own, the platform's client options (a socket
timeout of 30 s); the two ways take turns for ``--rounds`` rounds.  Per way:

- CPU and wall time per command, one command at a time on an idle loop
  (an ``EVAL`` of a one-line script, as the slot claim is a script);
- tasks created per command;
- a command's round trip on a busy loop: ``--busy`` other coroutines each
  spend ``--busy-us`` of CPU per turn of the loop (as other requests'
  parsing, routing and responses do in a web process), p50 and p99; every
  turn the command's coroutine waits for is a turn of all of them.

    .venv/bin/python -m bench.redis_writes
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time

import django
import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection

from balancer import redis_writes
from bench.common import median, percentile, report
from tests.support.processes import stop_process
from tests.support.redis_server import start_redis
from tests.support.tasks import tasks_counted

SCRIPT = "return redis.call('INCR', KEYS[1])"


def use(way: str) -> None:
    AbstractConnection.send_packed_command = (  # type: ignore[method-assign]
        redis_writes.send_packed_command
        if way == "at once"
        else redis_writes.redis_py_send
    )


async def idle_loop(port: int, commands: int) -> dict[str, float]:
    redis = aioredis.Redis(port=port, socket_timeout=30)
    await redis.ping()
    with tasks_counted() as tasks:
        cpu, wall = time.process_time(), time.perf_counter()
        for _ in range(commands):
            await redis.eval(SCRIPT, 1, "counter")
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    await redis.aclose()
    return {
        "cpu_us": cpu / commands * 1e6,
        "wall_us": wall / commands * 1e6,
        "tasks_per_command": tasks.made / commands,
    }


async def busy_loop(
    port: int, commands: int, busy: int, busy_us: float
) -> dict[str, float]:
    redis = aioredis.Redis(port=port, socket_timeout=30)
    await redis.ping()
    stop = False

    async def other_work() -> None:
        while not stop:
            end = time.perf_counter() + busy_us / 1e6
            while time.perf_counter() < end:
                pass
            await asyncio.sleep(0)

    others = [asyncio.create_task(other_work()) for _ in range(busy)]
    await asyncio.sleep(0.05)
    trips = []
    for _ in range(commands):
        start = time.perf_counter()
        await redis.eval(SCRIPT, 1, "counter")
        trips.append((time.perf_counter() - start) * 1000)
    stop = True
    await asyncio.gather(*others)
    await redis.aclose()
    return {"p50_ms": percentile(trips, 0.5), "p99_ms": percentile(trips, 0.99)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--commands", type=int, default=4000)
    parser.add_argument("--busy", type=int, default=4)
    parser.add_argument("--busy-us", type=float, default=100.0)
    parser.add_argument("--name", default="redis_writes")
    args = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "paddler_project.settings")
    django.setup()
    server = start_redis()
    ways = ("redis-py's (a task per write)", "at once")
    results: dict[str, list[dict[str, float]]] = {way: [] for way in ways}
    try:
        for round_ in range(args.rounds):
            for way in ways if round_ % 2 == 0 else reversed(ways):
                use(way)
                idle = asyncio.run(idle_loop(server.port, args.commands))
                busy = asyncio.run(
                    busy_loop(server.port, args.commands // 4, args.busy, args.busy_us)
                )
                results[way].append(idle | busy)
                print(way, idle | busy, flush=True)
    finally:
        stop_process(server.process)

    def mid(way: str, key: str) -> float:
        return median([r[key] for r in results[way]])

    rows = [
        [
            way,
            f"{mid(way, 'cpu_us'):.0f}",
            f"{mid(way, 'wall_us'):.0f}",
            f"{mid(way, 'tasks_per_command'):.1f}",
            f"{mid(way, 'p50_ms'):.2f}",
            f"{mid(way, 'p99_ms'):.2f}",
        ]
        for way in ways
    ]
    report(
        args.name,
        title="One Redis command in a web process: redis-py's write against "
        "the write made at once (balancer.redis_writes)",
        columns=[
            "write",
            "CPU us/command",
            "wall us/command",
            "tasks/command",
            "busy loop p50 (ms)",
            "busy loop p99 (ms)",
        ],
        rows=rows,
        notes=[
            f"EVAL of a one-line script, {args.commands} one after another on "
            "an idle loop; then "
            f"{args.commands // 4} on a loop where {args.busy} other coroutines "
            f"each spend {args.busy_us:.0f} us of CPU per turn.  Client options "
            "as the platform's: socket timeout 30 s.  Medians of "
            f"{args.rounds} rounds, the two ways taking turns.",
        ],
        data={"results": results},
    )


if __name__ == "__main__":
    main()
