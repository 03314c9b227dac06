"""``manage.py run_agent``: host a model and its slots for the web tier."""

from __future__ import annotations

import asyncio
import signal
from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from agents.worker import AgentWorker


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
            "--shutdown-grace",
            type=float,
            default=10.0,
            help="seconds in-flight requests get to finish on SIGTERM",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["slots"] < 1:
            raise CommandError("--slots must be at least 1")
        worker = AgentWorker(
            name=options["name"],
            slots=options["slots"],
            n_threads=options["threads"],
            n_gpu_layers=options["n_gpu_layers"],
            shutdown_grace_s=options["shutdown_grace"],
            backend=options["backend"],
        )
        asyncio.run(self._serve(worker))

    async def _serve(self, worker: AgentWorker) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, worker.request_stop)
        await worker.run()
