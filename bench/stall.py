"""Decode stalls: how long a running stream pauses while the same agent takes a
long conversation (rendered by its chat template and tokenized).

One agent with 2 slots.  A long greedy generation runs on one slot; once it
has streamed for a while, a conversation of ``--messages`` short messages
arrives for the other.  The figure is the longest pause between two tokens of
the running stream from that moment until the conversation is answered,
against its median token gap before (the baseline, in the same run).
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from balancer.chat_template import GEMMA_CHAT_TEMPLATE
from bench.common import MODEL, goal, median, report
from tests.support.constants import ENDLESS_PROMPT, GREEDY_PARAMETERS
from tests.support.fleet import running_platform

# Tokens streamed before the conversation arrives, to measure the baseline gap.
WARM_TOKENS = 30


def conversation(messages: int) -> list[dict[str, str]]:
    history = [
        {"role": "user" if i % 2 == 0 else "assistant", "content": "hi"}
        for i in range(messages - 1)
    ]
    return [*history, {"role": "user", "content": "hi"}]


def one_run(url: str, messages: int) -> dict[str, Any]:
    arrivals: list[float] = []

    def stream() -> None:
        with httpx.stream(
            "POST",
            f"{url}/api/v1/continue_from_raw_prompt",
            json={"raw_prompt": ENDLESS_PROMPT, "max_tokens": 400},
            timeout=300,
        ) as response:
            for _ in response.iter_lines():
                arrivals.append(time.monotonic())

    thread = threading.Thread(target=stream)
    thread.start()
    while len(arrivals) < WARM_TOKENS and thread.is_alive():
        time.sleep(0.02)
    posted = time.monotonic()
    response = httpx.post(
        f"{url}/api/v1/continue_from_conversation_history",
        json={"conversation_history": conversation(messages), "max_tokens": 1},
        timeout=300,
    )
    answered = time.monotonic()
    thread.join()
    gaps = list(itertools.pairwise(arrivals))
    before = [b - a for a, b in gaps if b < posted]
    during = [b - a for a, b in gaps if posted <= b <= answered]
    return {
        "status": response.status_code,
        "answered_s": answered - posted,
        "median_gap_before_ms": statistics.median(before) * 1000,
        "max_gap_during_ms": max(during, default=answered - posted) * 1000,
        "tokens_during": len(during),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--messages", type=int, default=10_000)
    args = parser.parse_args()
    state = {
        "model": {"LocalToAgent": str(MODEL)},
        "chat_template_override": {"content": GEMMA_CHAT_TEMPLATE},
        "use_chat_template_override": True,
        # Room for the conversation's messages under the prompt bounds.
        "inference_parameters": {
            **GREEDY_PARAMETERS,
            "context_size": max(2048, 2 * args.messages),
        },
    }
    runs = []
    with (
        tempfile.TemporaryDirectory() as tmp,
        running_platform(
            Path(tmp), state, agent_name="stall", PADDLER_LOG_LEVEL="WARNING"
        ) as web,
    ):
        for run in range(args.runs):
            outcome = one_run(web.url, args.messages)
            runs.append(outcome)
            print(
                f"run {run + 1}: longest pause {outcome['max_gap_during_ms']:.0f} ms "
                f"(median gap before {outcome['median_gap_before_ms']:.0f} ms), "
                f"conversation answered in {outcome['answered_s']:.2f} s",
                flush=True,
            )
    pause = median([r["max_gap_during_ms"] for r in runs])
    gap = median([r["median_gap_before_ms"] for r in runs])
    answered = median([r["answered_s"] for r in runs])
    report(
        "stall",
        title="Decode stalls while a long conversation is prepared",
        columns=["figure", "median over runs"],
        rows=[
            ["median token gap before (baseline)", f"{gap:.0f} ms"],
            ["longest pause while it is prepared", f"{pause:.0f} ms"],
            ["pause / baseline gap", f"{pause / gap:.1f}x"],
            [f"{args.messages}-message conversation answered", f"{answered:.2f} s"],
        ],
        notes=[
            f"{args.runs} runs; one agent, 2 slots; the conversation's messages "
            "are 'hi' each, with the Gemma template override."
        ],
        data={"runs": runs},
        goals=[
            goal(
                "a long prompt does not stop other slots for as long as it takes "
                "to prepare",
                pause < answered * 1000 / 2,
                f"longest pause {pause:.0f} ms against {answered:.2f} s to prepare",
            )
        ],
    )


if __name__ == "__main__":
    main()
