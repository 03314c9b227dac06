"""Write the test multimodal projection for a model: a tiny random vision encoder.

    .venv/bin/python scripts/make_test_mmproj.py OUTPUT.gguf [--model MODEL.gguf]

The file is a real ``gemma3``-type projection that libmtmd loads against the
model (its output width is read from the model file), so images go the whole
real path through an agent; what the model then says about them is nonsense.
For trying the image path by hand without a vision model; the tests write
their own copy (``tests/support/mmproj.py``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.mmproj import EncoderShape, model_width, write_test_mmproj  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path, help="where to write the .gguf")
    parser.add_argument(
        "--model",
        type=Path,
        default=ROOT / "var" / "models" / "gemma3-270m-q4_k_m.gguf",
        help="the text model whose embedding width the projection must give",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=EncoderShape.image_size)
    arguments = parser.parse_args()
    shape = EncoderShape(image_size=arguments.image_size)
    width = model_width(arguments.model)
    path = write_test_mmproj(
        arguments.output, text_width=width, seed=arguments.seed, shape=shape
    )
    print(
        f"wrote {path}: gemma3 projector, {shape.image_size} px images, "
        f"{shape.image_tokens} image tokens, {width}-wide embeddings"
    )


if __name__ == "__main__":
    main()
