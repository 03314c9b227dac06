"""What a token costs our processes on one surface, with the synthetic engine
paced like a GPU's decode: this checkout against a baseline (``--base``),
side by side in one run.

Two stacks, each of its own Redis, daphne and one synthetic agent whose
engine takes ``--step-ms`` per step (one token per active slot and step), one
started from each checkout.  Per round, ``--streams`` streams of ``--tokens``
tokens go to each stack in turn over ``--surface`` (the order alternates
between rounds), from a client in a process of its own.  Figures: the CPU per
token of the web process, the agent's relay (event loop and relay thread),
its engine thread and Redis (schedstat), medians over the rounds, and the
web's per round, paired.

The model's decode leaves our processes little room and its speed drifts, so
``bench.token_path model`` cannot tell apart changes under about a fifth
(docs/benchmarks.md, issue 19, sixth pass); a paced synthetic engine keeps
the load fixed and the comparison paired.

    .venv/bin/python -m bench.paced_streams --base ../tokpath-base --surface websocket
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import signal
import sys
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect

from bench.common import ROOT, median, report
from bench.token_path import PARTS, Stack, drive, running_stacks
from tests.support.constants import GREEDY_PARAMETERS

SURFACES = {"http_ndjson": "HTTP NDJSON", "websocket": "WebSocket"}


def drive_socket(url: str, streams: int, tokens: int, result: Any) -> None:
    """Runs in its own process: ``streams`` requests on as many sockets, at
    once; counts the token messages."""
    socket_url = url.replace("http://", "ws://", 1) + "/api/v1/inference_socket"

    async def one(number: int) -> int:
        async with connect(socket_url, max_size=None) as socket:
            request = {
                "ContinueFromRawPrompt": {"raw_prompt": "x", "max_tokens": tokens}
            }
            await socket.send(
                json.dumps({"Request": {"id": f"r{number}", "request": request}})
            )
            count = 0
            while True:
                message = await socket.recv()
                if "Done" in message:
                    return count
                count += 1

    async def main() -> int:
        return sum(await asyncio.gather(*(one(n) for n in range(streams))))

    result["tokens"] = asyncio.run(main())


def block(stack: Stack, surface: str, streams: int, tokens: int) -> dict[str, float]:
    """One round's streams on one stack: CPU per token by part (us)."""
    manager = multiprocessing.Manager()
    result = manager.dict()
    target = drive_socket if surface == "websocket" else drive
    before = stack.cpu()
    process = multiprocessing.Process(
        target=target, args=(stack.web.url, streams, tokens, result)
    )
    process.start()
    process.join()
    after = stack.cpu()
    made = int(result["tokens"])
    manager.shutdown()
    return {part: (after[part] - before[part]) * 1e6 / max(made, 1) for part in PARTS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="a checkout of the baseline")
    parser.add_argument("--surface", choices=tuple(SURFACES), default="websocket")
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=800)
    parser.add_argument("--step-ms", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--name", default="paced_streams")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    state = {"model": "None", "inference_parameters": dict(GREEDY_PARAMETERS)}
    rounds: dict[str, list[dict[str, float]]] = {"base": [], "this": []}
    with running_stacks(
        Path(args.base),
        state,
        slots=args.streams,
        agent_args=("--backend", "synthetic"),
        agent_env={"PADDLER_SYNTHETIC_STEP_MS": str(args.step_ms)},
    ) as stacks:
        for stack in stacks:  # connections and code paths warm
            block(stack, args.surface, args.streams, 40)
        for number in range(args.rounds):
            for stack in stacks if number % 2 == 0 else stacks[::-1]:
                figures = block(stack, args.surface, args.streams, args.tokens)
                rounds[stack.label].append(figures)
                print(
                    f"round {number + 1} {stack.label}: "
                    + " ".join(f"{p} {figures[p]:.1f}" for p in PARTS),
                    flush=True,
                )

    def ours(figures: dict[str, float]) -> float:
        return figures["web"] + figures["agent_relay"] + figures["redis"]

    rows = [
        [
            label,
            f"{median([ours(f) for f in entries]):.1f}",
            *(f"{median([f[p] for f in entries]):.1f}" for p in PARTS),
            " / ".join(f"{f['web']:.0f}" for f in entries),
        ]
        for label, entries in rounds.items()
    ]
    lower = sum(
        this["web"] < base["web"]
        for base, this in zip(rounds["base"], rounds["this"], strict=True)
    )
    report(
        args.name,
        title=f"One token's CPU over {SURFACES[args.surface]}, the synthetic "
        f"engine paced at {args.step_ms:g} ms a step, this checkout against "
        "main",
        columns=[
            "code",
            "ours (us/token)",
            *(f"{p} (us/token)" for p in PARTS),
            "web per round",
        ],
        rows=rows,
        notes=[
            f"{args.streams} streams of {args.tokens} tokens at once, "
            f"{args.rounds} rounds, medians; base and this running at once "
            "(each its own Redis, daphne and synthetic agent), asked in turn, "
            "the order alternating between rounds.  'ours' is web + agent "
            "relay + Redis.",
            f"The web process spent less per token on this checkout in {lower} "
            f"of {args.rounds} rounds.",
        ],
        data={"args": vars(args), "rounds": rounds, "root": str(ROOT)},
    )


if __name__ == "__main__":
    main()
