"""The demo model in a bare llama.cpp context, for tests below the engine.

The engine is the only place that drives llama.cpp in the product; tests of
the pieces it will call (``agents.multimodal``) load the model themselves with
the same low-level API, greedily sample a few tokens, and clear sequences.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import llama_cpp


@llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]
def _quiet(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    pass


@dataclass
class LlamaRuntime:
    model: Any
    context: Any
    memory: Any
    vocab: Any
    n_batch: int

    def clear(self, seq_id: int) -> None:
        llama_cpp.llama_memory_seq_rm(self.memory, seq_id, -1, -1)

    def keep(self, seq_id: int, positions: int) -> None:
        """Drop what sequence ``seq_id`` holds from position ``positions`` on."""
        llama_cpp.llama_memory_seq_rm(self.memory, seq_id, positions, -1)

    def greedy(self, *, seq_id: int, position: int, count: int) -> list[int]:
        """``count`` tokens sampled at temperature 0 after the last logits."""
        sampler = llama_cpp.llama_sampler_init_greedy()
        batch = llama_cpp.llama_batch_init(1, 0, 1)
        tokens: list[int] = []
        try:
            for _ in range(count):
                token = int(llama_cpp.llama_sampler_sample(sampler, self.context, -1))
                tokens.append(token)
                batch.token[0] = token
                batch.pos[0] = position
                batch.n_seq_id[0] = 1
                batch.seq_id[0][0] = seq_id
                batch.logits[0] = True
                batch.n_tokens = 1
                if llama_cpp.llama_decode(self.context, batch) != 0:
                    raise RuntimeError("llama_decode failed while sampling")
                position += 1
        finally:
            llama_cpp.llama_batch_free(batch)
            llama_cpp.llama_sampler_free(sampler)
        return tokens

    def close(self) -> None:
        llama_cpp.llama_free(self.context)
        llama_cpp.llama_model_free(self.model)


def open_runtime(
    model_path: Path,
    *,
    sequences: int = 2,
    context_per_sequence: int = 512,
    threads: int = 2,
    n_batch: int = 512,
) -> LlamaRuntime:
    """The model with a context of ``sequences`` sequences, configured like
    the engine's (a full sliding-window cache, so any prefix can be kept)."""
    llama_cpp.llama_log_set(_quiet, ctypes.c_void_p(0))
    llama_cpp.llama_backend_init()
    model = llama_cpp.llama_model_load_from_file(
        str(model_path).encode(), llama_cpp.llama_model_default_params()
    )
    if not model:
        raise RuntimeError(f"llama.cpp could not load {model_path}")
    params = llama_cpp.llama_context_default_params()
    params.n_ctx = context_per_sequence * sequences
    params.n_batch = n_batch
    params.n_ubatch = n_batch
    params.n_seq_max = sequences
    params.n_threads = threads
    params.n_threads_batch = threads
    params.swa_full = True
    params.no_perf = True
    context = llama_cpp.llama_init_from_model(model, params)
    if not context:
        llama_cpp.llama_model_free(model)
        raise RuntimeError("llama.cpp could not create a context")
    return LlamaRuntime(
        model=model,
        context=context,
        memory=llama_cpp.llama_get_memory(context),
        vocab=llama_cpp.llama_model_get_vocab(model),
        n_batch=n_batch,
    )
