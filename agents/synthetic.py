"""The synthetic engine: tokens without a model, for benchmarks and
simulations (``run_agent --backend synthetic``), behind ``EngineProtocol``."""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from agents.jobs import (
    EmbeddingJob,
    Generation,
    Output,
    error_output,
)
from agents.output_split import OutputSplitter, splitter_for
from balancer.chat_template import ChatTemplate
from balancer.contract import SlotReport, Usage, done_item

logger = logging.getLogger(__name__)

# How often a paced synthetic engine logs how late its steps came back.
GIL_REPORT_S = 2.0


def step_seconds_from_env() -> float:
    """``PADDLER_SYNTHETIC_STEP_MS``: the decode step the synthetic engine
    stands in for (0, the default: none, tokens as fast as it can)."""
    raw = os.environ.get("PADDLER_SYNTHETIC_STEP_MS", "0")
    try:
        step_ms = float(raw)
    except ValueError:
        raise ValueError(
            f"PADDLER_SYNTHETIC_STEP_MS must be a number: {raw!r}"
        ) from None
    if step_ms < 0:
        raise ValueError(f"PADDLER_SYNTHETIC_STEP_MS must not be negative: {raw!r}")
    return step_ms / 1000


class SyntheticEngine:
    """Emits tokens without a model.  For benchmarks only.

    It measures what the platform itself costs per token (dispatch, Redis,
    relaying), with no llama.cpp in the way: ``run_agent --backend synthetic``.
    Every step, each active request gets one token, built as the llama.cpp
    engine builds it (``agents.output_split``).

    ``step_s`` stands in for a GPU's decode step: the engine sleeps that long
    each step, without the interpreter lock, as ``llama_decode`` does, and
    measures how much later than asked it got it back (``gil_waits``): the
    time the engine thread waited for the lock held by the relay (plus the
    system's timer slack, which a step with nothing else running shows).
    With ``step_s`` 0 it generates as fast as it can.
    """

    def __init__(
        self,
        *,
        slots: int,
        on_output: Callable[[list[Output]], None],
        step_s: float = 0.0,
    ) -> None:
        self.n_slots = slots
        self.step_s = step_s
        # Seconds past ``step_s`` each paced step took, the latest first out.
        self.gil_waits: deque[float] = deque(maxlen=100_000)
        self._reported_at = time.monotonic()
        self.metadata: dict[str, str] = {"general.name": "synthetic"}
        self.chat_template: ChatTemplate | None = None
        self.bos_token = ""
        self.eos_token = ""
        self._on_output = on_output
        self._commands: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._active: dict[str, tuple[Generation, int, OutputSplitter]] = {}
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
        jobs = [job for job, _, _ in list(self._active.values())]
        jobs += list(self._waiting)
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
                self._active[job.request_id] = (job, 0, splitter_for(job))
            if self.step_s and self._active:
                self._decode_step()
            outputs: list[Output] = []
            for request_id, (job, count, splitter) in list(self._active.items()):
                if count >= job.max_tokens:
                    # Every field of Paddler's usage, as the llama.cpp engine's.
                    usage: Usage = {
                        "prompt_tokens": 1,
                        "cached_prompt_tokens": 0,
                        "input_image_tokens": 0,
                        "input_audio_tokens": 0,
                        "content_tokens": count,
                        "reasoning_tokens": 0,
                        "tool_call_tokens": 0,
                        "undeterminable_tokens": 0,
                    }
                    outputs.append(
                        Output(job.destination, done_item(request_id, usage, slot=0))
                    )
                    del self._active[request_id]
                    continue
                outputs.extend(
                    Output(job.destination, item)
                    for item in splitter.feed(f" t{count}")
                )
                self._active[request_id] = (job, count + 1, splitter)
            if outputs:
                self._on_output(outputs)

    def _decode_step(self) -> None:
        """Sleep ``step_s`` without the interpreter lock, as a GPU decode
        would, and note how late the lock came back."""
        started = time.perf_counter()
        time.sleep(self.step_s)
        self.gil_waits.append(time.perf_counter() - started - self.step_s)
        now = time.monotonic()
        if now - self._reported_at >= GIL_REPORT_S:
            self._reported_at = now
            waits = sorted(self.gil_waits)
            self.gil_waits.clear()
            logger.warning(
                "synthetic steps: %d, active %d, late by p50 %.1f us, "
                "p99 %.1f us, mean %.1f us",
                len(waits),
                len(self._active),
                waits[len(waits) // 2] * 1e6,
                waits[int(len(waits) * 0.99)] * 1e6,
                sum(waits) / len(waits) * 1e6,
            )
