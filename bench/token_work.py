"""The agent's work per generated token between two decode steps.

Sampling aside: what the engine does with each slot's sampled token
(``Engine._sample``: the token's bytes from the vocabulary, detokenising,
stop sequences, the output splitter, the output item) and what the relay
does with the step's outputs (``agents.messages.output_batches`` and the JSON
pushed to Redis), at ``--slots`` active slots, one token each per step.  The
loop mirrors ``Engine._sample`` call for call (it cannot run it: that one
samples from a real decode); the vocabulary is the demo model's, loaded
without its weights.

Run by ``bench.token_path work`` in each checkout it compares (the working
directory is the checkout whose code is measured); prints one JSON object.

    .venv/bin/python bench/token_work.py [--slots 64] [--steps 400]
"""

from __future__ import annotations

import argparse
import codecs
import ctypes
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, os.getcwd())
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "paddler_project.settings")

import llama_cpp

from agents.jobs import Generation, Output
from agents.messages import output_batches
from agents.output_split import splitter_for
from agents.slots import split_on_stop

MODEL = Path(__file__).resolve().parent.parent / "var/models/gemma3-270m-q4_k_m.gguf"
TEXT = (
    "The quick brown fox jumps over the lazy dog. Counting slowly: 1, 2, 3, 4, "
    "5, 6, 7, 8, 9, 10. Caf\u00e9s in Z\u00fcrich serve \u00e9clairs; "
    "\u6771\u4eac has many too. "
) * 20


@llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]
def _silent_log(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slots", type=int, default=64)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument(
        "--stop", action="store_true", help="give each request a stop sequence"
    )
    args = parser.parse_args()
    llama_cpp.llama_log_set(_silent_log, ctypes.c_void_p(0))
    llama_cpp.llama_backend_init()
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = llama_cpp.llama_model_load_from_file(str(MODEL).encode(), params)
    vocab = llama_cpp.llama_model_get_vocab(model)
    data = TEXT.encode()
    ids = (llama_cpp.llama_token * (len(data) + 8))()
    count = llama_cpp.llama_tokenize(vocab, data, len(data), ids, len(ids), False, True)
    tokens = list(ids[:count])
    piece = ctypes.create_string_buffer(256)

    jobs = [
        Generation(
            request_id=f"{index:032x}",
            max_tokens=1 << 30,
            raw_prompt="x",
            destination="paddler:web:0123456789abcdef:inbox",
            stop=["</answer>"] if args.stop else [],
        )
        for index in range(args.slots)
    ]
    splitters = [splitter_for(job) for job in jobs]
    decoders = [codecs.getincrementaldecoder("utf-8")() for _ in jobs]
    held = ["" for _ in jobs]
    told = [False for _ in jobs]
    payload_bytes = 0

    def step(number: int) -> int:
        outputs: list[Output] = []
        for index, job in enumerate(jobs):
            # Engine._sample from the sampled token on.
            token = tokens[(number + index) % len(tokens)]
            if llama_cpp.llama_vocab_is_eog(vocab, token):
                continue
            size = llama_cpp.llama_token_to_piece(
                vocab,
                token,
                piece,
                len(piece),
                0,
                splitters[index].wants_special_tokens,
            )
            text = held[index] + decoders[index].decode(piece.raw[:size])
            sendable, held[index], _ = split_on_stop(text, job.stop)
            if sendable:
                for item in splitters[index].feed(sendable):
                    output = Output(job.destination, item)
                    if not told[index]:
                        output.item["meta"] = {"slot": index}
                        told[index] = True
                    outputs.append(output)
        # The relay's share: one batch per destination, as JSON.
        batches = output_batches(
            outputs, agent_id="a" * 32, agent_name="bench", lost={}
        )
        return sum(len(json.dumps(batch)) for batch in batches.values())

    for number in range(20):  # warm up
        step(number)
    started = time.perf_counter()
    cpu = time.process_time()
    for number in range(args.steps):
        payload_bytes += step(number)
    seconds = time.perf_counter() - started
    cpu_seconds = time.process_time() - cpu
    made = args.steps * args.slots
    print(
        json.dumps(
            {
                "slots": args.slots,
                "steps": args.steps,
                "us_per_token": seconds / made * 1e6,
                "cpu_us_per_token": cpu_seconds / made * 1e6,
                "bytes_per_token": payload_bytes / made,
            }
        )
    )
    llama_cpp.llama_model_free(model)


if __name__ == "__main__":
    main()
