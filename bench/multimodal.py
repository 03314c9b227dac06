"""What an image costs with the test projection: loading it, and one image.

The generated ``gemma3``-type projection (``tests/support/mmproj.py``) against
the demo model, in this process, through ``agents.multimodal``.  Figures
(medians over ``--runs``):

- loading the projection (``mtmd_init_from_file``), without and with
  libmtmd's warm-up encode;
- one image: decoding and scaling a 1024x768 JPEG (Pillow), tokenizing it
  with libmtmd (its preprocessing to the encoder's size), encoding it alone
  (``MultimodalPrompt.encode_image``), and evaluating text + image + text into a
  sequence from scratch;
- the baseline: evaluating a text-only prompt of the same number of
  positions.

The encoder is tiny, so these show the overhead of the path, not the cost of
a real vision model (whose encoder is hundreds of millions of parameters).

    .venv/bin/python -m bench.multimodal [--runs 5] [--image-size 64]
"""

from __future__ import annotations

import argparse
import io
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from PIL import Image

from agents.multimodal import Projection, decode_image, evaluate_tokens
from bench.common import MODEL, machine
from tests.support.llama_runtime import open_runtime
from tests.support.mmproj import EncoderShape, model_width, write_test_mmproj


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def photo_jpeg() -> bytes:
    rng = random.Random(7)
    image = Image.frombytes(
        "RGB", (1024, 768), bytes(rng.randrange(256) for _ in range(1024 * 768 * 3))
    )
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--image-size", type=int, default=EncoderShape.image_size)
    parser.add_argument("--threads", type=int, default=2)
    arguments = parser.parse_args()
    shape = EncoderShape(image_size=arguments.image_size)
    runtime = open_runtime(
        MODEL, sequences=1, context_per_sequence=2048, threads=arguments.threads
    )
    figures: dict[str, list[float]] = {}

    def record(name: str, seconds: float) -> None:
        figures.setdefault(name, []).append(seconds * 1000)

    with tempfile.TemporaryDirectory() as directory:
        path = write_test_mmproj(
            Path(directory) / "mmproj.gguf", text_width=model_width(MODEL), shape=shape
        )
        for _ in range(arguments.runs):
            for warmup in (False, True):
                started = time.perf_counter()
                loaded = Projection(path, model=runtime.model, warmup=warmup)
                record(
                    f"load projection (warm-up {warmup})", time.perf_counter() - started
                )
                loaded.close()
        projection = Projection(path, model=runtime.model, n_threads=arguments.threads)
        data = photo_jpeg()
        text = f"Look at {projection.marker}. It shows"
        for _ in range(arguments.runs):
            started = time.perf_counter()
            image = decode_image(data, max_edge=1024)
            record("decode + scale 1024x768 JPEG", time.perf_counter() - started)
            started = time.perf_counter()
            prompt = projection.tokenize(text, [image], add_special=True)
            record("tokenize (preprocess)", time.perf_counter() - started)
            record("encode image alone", timed(partial(prompt.encode_image, 1)))
            runtime.clear(0)
            evaluate = partial(
                prompt.evaluate, runtime.context, seq_id=0, n_batch=runtime.n_batch
            )
            record(
                f"evaluate text+image+text ({prompt.n_pos} positions)",
                timed(evaluate),
            )
            n_pos = prompt.n_pos
            prompt.close()
            runtime.clear(0)
            words = " ".join(["word"] * (n_pos * 2))
            with projection.tokenize(words, []) as plain:
                tokens = plain.chunks[0].tokens[:n_pos]
            baseline = partial(
                evaluate_tokens,
                runtime.context,
                tokens,
                seq_id=0,
                position=0,
                n_batch=runtime.n_batch,
                logits_last=True,
            )
            record(f"baseline: evaluate {len(tokens)} text tokens", timed(baseline))
        projection.close()
    runtime.close()
    print(f"# multimodal path, {machine()}, encoder {shape}")
    for name, values in figures.items():
        print(
            f"{name:48} median {statistics.median(values):8.1f} ms  (n={len(values)})"
        )


if __name__ == "__main__":
    main()
