"""``manage.py run_agent``: host a model and its slots for the web tier."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from agents.worker import AgentWorker
from balancer.pools import DEFAULT_POOL, PoolError, check_pool_name

logger = logging.getLogger(__name__)

# After a stop signal, the agent has its shutdown grace plus this long to drain,
# stop the engine and deregister; then the process ends regardless (a native
# call that never returns must not keep a stopped agent alive).
FORCED_EXIT_AFTER_S = 15.0


class Command(BaseCommand):
    help = "Run an agent: load the desired model and serve its slots over Redis."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--name", required=True, help="name shown in the panel")
        parser.add_argument(
            "--slots", type=int, default=4, help="parallel conversations (default 4)"
        )
        parser.add_argument(
            "--threads",
            type=int,
            default=None,
            help="CPU threads for llama.cpp (default: every core)",
        )
        parser.add_argument(
            "--n-gpu-layers",
            type=int,
            default=None,
            help="layers to offload to the GPU, -1 for all "
            "(default: the desired state's n_gpu_layers)",
        )
        parser.add_argument(
            "--backend",
            choices=("llama", "synthetic"),
            default="llama",
            help="'synthetic' emits tokens without a model (benchmarks only)",
        )
        parser.add_argument(
            "--pool",
            default=DEFAULT_POOL,
            help="the model pool this agent serves and takes its desired state "
            f"from (default {DEFAULT_POOL!r})",
        )
        parser.add_argument(
            "--cache-ram-mb",
            type=int,
            default=None,
            help="host memory (MiB) for the KV caches of conversations whose "
            "slot was taken, 0 for none (default: PADDLER_AGENT_CACHE_RAM_MB)",
        )
        parser.add_argument(
            "--cache-dir",
            default=None,
            help="a directory of this agent's own for the disk tier of those "
            "KV caches, '' for none (default: PADDLER_AGENT_CACHE_DIR)",
        )
        parser.add_argument(
            "--cache-disk-mb",
            type=int,
            default=None,
            help="the most the disk tier holds, MiB "
            "(default: PADDLER_AGENT_CACHE_DISK_MB)",
        )
        parser.add_argument(
            "--shutdown-grace",
            type=float,
            default=10.0,
            help="seconds in-flight requests get to finish on SIGTERM",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["slots"] < 1:
            raise CommandError("--slots must be at least 1")
        try:
            check_pool_name(options["pool"])
        except PoolError as error:
            raise CommandError(f"--pool: {error}") from None
        if options["cache_ram_mb"] is not None and options["cache_ram_mb"] < 0:
            raise CommandError("--cache-ram-mb cannot be negative")
        if options["cache_disk_mb"] is not None and options["cache_disk_mb"] < 0:
            raise CommandError("--cache-disk-mb cannot be negative")
        try:
            worker = self._worker(options)
        except OSError as error:
            raise CommandError(f"--cache-dir: {error}") from None
        asyncio.run(self._serve(worker))

    def _worker(self, options: dict[str, Any]) -> AgentWorker:
        return AgentWorker(
            name=options["name"],
            slots=options["slots"],
            n_threads=options["threads"],
            n_gpu_layers=options["n_gpu_layers"],
            shutdown_grace_s=options["shutdown_grace"],
            backend=options["backend"],
            pool=options["pool"],
            cache_ram_mb=options["cache_ram_mb"],
            cache_dir=options["cache_dir"],
            cache_disk_mb=options["cache_disk_mb"],
        )

    async def _serve(self, worker: AgentWorker) -> None:
        loop = asyncio.get_running_loop()
        stopping = threading.Event()

        def on_signal() -> None:
            if stopping.is_set():
                # A second signal: the operator will not wait any longer.
                os._exit(1)
            stopping.set()
            worker.request_stop()
            deadline = worker.shutdown_grace_s + FORCED_EXIT_AFTER_S
            timer = threading.Timer(deadline, _forced_exit, args=(deadline,))
            timer.daemon = True
            timer.start()

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, on_signal)
        await worker.run()


def _forced_exit(seconds: float) -> None:
    logger.error("the agent did not stop within %.0f s; exiting now", seconds)
    os._exit(1)
