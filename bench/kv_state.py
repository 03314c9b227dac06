"""What saving and restoring a slot's KV cache costs: bytes per token of
sequence state, and milliseconds to save and to restore 1k and 4k tokens.

On an engine's own context (2 slots), with llama.cpp's low-level calls the
host-memory tier uses: ``llama_state_seq_get_size`` and
``llama_state_seq_get_data`` save sequence 0, ``llama_state_seq_set_data``
restores it into sequence 1.  The KV cache types are Paddler's default (Q8_0)
and the tests' (F16).

    .venv/bin/python -m bench.kv_state
    .venv/bin/python -m bench.kv_state --lengths 1024 4096 --repeats 5
"""

from __future__ import annotations

import argparse
import ctypes
import random
import time
from typing import Any

import llama_cpp

from agents.engine import Engine
from balancer.desired_state import InferenceParameters
from bench.common import MODEL, median, report


def fill(engine: Engine, tokens: list[int]) -> None:
    """Evaluate ``tokens`` into sequence 0, in batches of the engine's size."""
    context, batch = engine._context, engine._batch
    for start in range(0, len(tokens), engine._n_batch):
        chunk = tokens[start : start + engine._n_batch]
        for index, token in enumerate(chunk):
            batch.token[index] = token
            batch.pos[index] = start + index
            batch.n_seq_id[index] = 1
            batch.seq_id[index][0] = 0
            batch.logits[index] = index == len(chunk) - 1
        batch.n_tokens = len(chunk)
        status = llama_cpp.llama_decode(context, batch)
        if status != 0:
            raise RuntimeError(f"llama_decode failed ({status})")


def measure(
    dtype: str, length: int, repeats: int, threads: int
) -> dict[str, float | int | str]:
    parameters = InferenceParameters(
        context_size=length + 64,
        n_batch=512,
        k_cache_dtype=dtype,
        v_cache_dtype=dtype,
    )
    engine = Engine(
        model_path=str(MODEL),
        slots=2,
        parameters=parameters,
        chat_template_override=None,
        on_output=lambda outputs: None,
        n_threads=threads,
    )
    try:
        engine.warm_up()
        vocabulary = llama_cpp.llama_vocab_n_tokens(engine._vocab)
        rng = random.Random(length)
        # Ordinary tokens (the first few hundred ids are control tokens).
        tokens = [rng.randrange(1000, vocabulary) for _ in range(length)]
        filled_at = time.perf_counter()
        fill(engine, tokens)
        fill_ms = (time.perf_counter() - filled_at) * 1000
        context, memory = engine._context, engine._memory
        saves, restores = [], []
        size = 0
        for _ in range(repeats):
            started = time.perf_counter()
            size = llama_cpp.llama_state_seq_get_size(context, 0)
            buffer = (ctypes.c_uint8 * size)()
            written = llama_cpp.llama_state_seq_get_data(context, buffer, size, 0)
            saves.append((time.perf_counter() - started) * 1000)
            assert written == size, (written, size)
            llama_cpp.llama_memory_seq_rm(memory, 1, 0, -1)
            started = time.perf_counter()
            read = llama_cpp.llama_state_seq_set_data(context, buffer, size, 1)
            restores.append((time.perf_counter() - started) * 1000)
            assert read == size, (read, size)
        return {
            "dtype": dtype,
            "tokens": length,
            "bytes": size,
            "bytes_per_token": size / length,
            "save_ms": median(saves),
            "restore_ms": median(restores),
            "evaluate_ms": fill_ms,
        }
    finally:
        engine.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--dtypes", nargs="+", default=["Q8_0", "F16"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    results: list[dict[str, Any]] = []
    for dtype in args.dtypes:
        for length in args.lengths:
            result = measure(dtype, length, args.repeats, args.threads)
            print(result, flush=True)
            results.append(result)
    report(
        "kv_state",
        title="Saving and restoring a slot's KV cache (llama_state_seq_*)",
        columns=[
            "KV cache type",
            "tokens",
            "state (MiB)",
            "bytes per token",
            "save (ms)",
            "restore (ms)",
            "evaluating them instead (ms)",
        ],
        rows=[
            [
                r["dtype"],
                r["tokens"],
                f"{r['bytes'] / 2**20:.1f}",
                f"{r['bytes_per_token']:.0f}",
                f"{r['save_ms']:.1f}",
                f"{r['restore_ms']:.1f}",
                f"{r['evaluate_ms']:.0f}",
            ]
            for r in results
        ],
        notes=[
            "One engine of 2 slots per row (context of the row's tokens + 64), "
            f"{args.threads} llama.cpp thread(s), CPU; save is get_size + "
            "get_data of sequence 0 into a fresh buffer, restore is set_data of "
            f"that buffer into an emptied sequence 1; median of {args.repeats}. "
            "The last column is what a restore spares: evaluating the same "
            "tokens (random ordinary tokens, batches of 512), measured once.",
            "A sequence's state holds its sliding-window layers (Gemma 3: "
            "window 512) for the last window positions only, so bytes per "
            "token fall as sequences grow past the window.",
        ],
        data={"args": vars(args), "results": results},
    )


if __name__ == "__main__":
    main()
