"""What an image costs routing: a conversation's fingerprint with a large image.

``conversation_prefix`` hashes each image's decoded bytes.  The web tier
fingerprints a request more than once (validation notes the digest, routing
reads it; the agent hashes the chain its slot holds), and every later turn of
a conversation brings its images back.  Figures, each against fingerprinting
the same conversation without its image, in the same run:

- the first fingerprint of a new image (base64-decoded and hashed);
- a fingerprint of a URL already seen (``images.url_digest``'s cache).

    .venv/bin/python -m bench.image_fingerprint --megabytes 10 --runs 5
"""

from __future__ import annotations

import argparse
import os
import time

from balancer import images
from balancer.images import data_url
from balancer.routing import conversation_prefix


def timed(function: object, runs: int) -> float:
    """Median seconds of ``function()`` over ``runs`` calls."""
    assert callable(function)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--megabytes", type=float, default=10.0)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    size = int(args.megabytes * 1_000_000)
    text = "Describe this picture in one sentence. " * 20

    def history(url: str | None) -> list[dict[str, object]]:
        parts: list[dict[str, object]] = [{"type": "text", "text": text}]
        if url is not None:
            parts.append({"type": "image_url", "image_url": {"url": url}})
        return [{"role": "user", "content": parts}]

    baseline = timed(lambda: conversation_prefix(history(None)), args.runs)
    urls = [data_url("image/png", os.urandom(size)) for _ in range(args.runs)]
    firsts = []
    for url in urls:  # a new image each time: nothing cached
        started = time.perf_counter()
        conversation_prefix(history(url))
        firsts.append(time.perf_counter() - started)
    first = sorted(firsts)[len(firsts) // 2]
    cached = timed(lambda: conversation_prefix(history(urls[0])), args.runs)
    print(f"image: {size} bytes ({len(urls[0])} characters as a data URL)")
    print(f"text only:          {baseline * 1e6:10.1f} us")
    print(f"new image:          {first * 1e6:10.1f} us  ({first / baseline:,.0f}x)")
    print(f"image seen before:  {cached * 1e6:10.1f} us  ({cached / baseline:,.1f}x)")
    print(f"fingerprints kept:  {len(images._DIGESTS)}")


if __name__ == "__main__":
    main()
