"""Many synthetic agents in one process, for ``bench.fleet``.

Each is a whole ``AgentWorker`` (``run_agent --backend synthetic``) with its
own Redis connection, channel, engine thread and heartbeat: the Redis traffic
of one agent per host, without a Python interpreter per agent.

    python bench/fleet_agents.py --count 25 --slots 8 --prefix sim-0

Run with the code under test's root as the working directory and on
``PYTHONPATH`` (``bench.fleet`` does): it imports that tree's ``agents``.  It
stops its agents on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal

import django


async def serve(count: int, slots: int, prefix: str) -> None:
    from agents.worker import AgentWorker

    workers = [
        AgentWorker(name=f"{prefix}-{index}", slots=slots, backend="synthetic")
        for index in range(count)
    ]

    def stop_all() -> None:
        for worker in workers:
            worker.request_stop()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop_all)
    await asyncio.gather(*(worker.run() for worker in workers))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--prefix", required=True)
    args = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "paddler_project.settings")
    django.setup()
    asyncio.run(serve(args.count, args.slots, args.prefix))


if __name__ == "__main__":
    main()
