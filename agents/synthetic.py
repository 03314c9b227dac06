"""The synthetic engine: tokens without a model, for benchmarks and
simulations (``run_agent --backend synthetic``), behind ``EngineProtocol``."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from agents.jobs import (
    EmbeddingJob,
    Generation,
    Output,
    error_output,
)
from balancer.chat_template import ChatTemplate
from balancer.contract import SlotReport, Usage, content_token_item, done_item


class SyntheticEngine:
    """Emits tokens without a model, as fast as it can.  For benchmarks only.

    It measures what the platform itself costs per token (dispatch, Redis,
    relaying), with no llama.cpp in the way: ``run_agent --backend synthetic``.
    Every step, each active request gets one token.
    """

    def __init__(
        self, *, slots: int, on_output: Callable[[list[Output]], None]
    ) -> None:
        self.n_slots = slots
        self.metadata: dict[str, str] = {"general.name": "synthetic"}
        self.chat_template: ChatTemplate | None = None
        self.bos_token = ""
        self.eos_token = ""
        self._on_output = on_output
        self._commands: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._active: dict[str, tuple[Generation, int]] = {}
        self._waiting: list[Generation] = []
        self._stopped = threading.Event()
        self.ready = threading.Event()
        self.ready.set()
        self.serves_images = False
        # For the worker's watchdog, as the llama.cpp engine keeps them.
        self.beat = time.monotonic()
        self.failure: str | None = None

    def use_chat_template(self, override: str | None) -> None:
        """Synthetic generation renders no template."""

    def submit(self, job: Generation) -> None:
        self._commands.put(("submit", job))

    def submit_embeddings(self, job: EmbeddingJob) -> None:
        self._on_output([error_output(job, 400, "synthetic backend")])

    def cancel(self, request_id: str) -> None:
        self._commands.put(("cancel", request_id))

    def stop(self) -> None:
        self._stopped.set()
        self._commands.put(("wake", None))

    def close(self) -> None:
        pass

    @property
    def slots_processing(self) -> int:
        return len(self._active) + len(self._waiting)

    def destinations(self) -> dict[str, str]:
        jobs = [job for job, _ in list(self._active.values())] + list(self._waiting)
        return {job.request_id: job.destination for job in jobs}

    def slot_states(self) -> list[SlotReport]:
        busy = len(self._active)
        return [{"busy": i < busy, "prefix": []} for i in range(self.n_slots)]

    def run(self) -> None:
        while not self._stopped.is_set():
            self.beat = time.monotonic()
            block = not self._active
            try:
                command = self._commands.get(timeout=0.5) if block else None
                while True:
                    if command is not None:
                        kind, payload = command
                        if kind == "submit":
                            self._waiting.append(payload)
                        elif kind == "cancel":
                            self._active.pop(payload, None)
                    command = self._commands.get_nowait()
            except queue.Empty:
                pass
            while self._waiting and len(self._active) < self.n_slots:
                job = self._waiting.pop(0)
                self._active[job.request_id] = (job, 0)
            outputs: list[Output] = []
            for request_id, (job, count) in list(self._active.items()):
                if count >= job.max_tokens:
                    usage: Usage = {
                        "prompt_tokens": 1,
                        "cached_prompt_tokens": 0,
                        "content_tokens": count,
                    }
                    outputs.append(
                        Output(job.destination, done_item(request_id, usage, slot=0))
                    )
                    del self._active[request_id]
                    continue
                outputs.append(
                    Output(job.destination, content_token_item(request_id, " tok"))
                )
                self._active[request_id] = (job, count + 1)
            if outputs:
                self._on_output(outputs)
