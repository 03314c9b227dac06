"""The host-memory tier on a real engine: a conversation whose slot was taken
by another comes back from host memory, and generates what a fresh
evaluation of its prompt generates, token for token.

Engines of one slot each run in this process on the demo model (no Redis
needed), greedy: any other conversation takes the slot, so each restore below
is the tier's doing.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agents.engine import Engine
from agents.host_cache import HostCache
from agents.jobs import Generation, Output
from balancer.chat_template import GEMMA_CHAT_TEMPLATE
from balancer.contract import Message, Usage
from balancer.desired_state import InferenceParameters

WAIT_S = 120
TOKENS = 16
BUDGET = 64 * 2**20

FIRST_QUESTION = (
    "I am planning a cycling trip along the river next weekend with two "
    "friends. What should I pack for a day of about sixty kilometres?"
)
OTHER_QUESTION = (
    "Write a short note to my neighbour asking whether she could water the "
    "plants on the balcony while I am away for the holidays."
)
RAW_PROMPT = (
    "The history of the bicycle begins in the early nineteenth century, when "
    "inventors in Germany and France built wooden machines that riders pushed "
    "along with their feet. Pedals came later, and with them"
)
OTHER_RAW_PROMPT = (
    "A recipe for bread needs flour, water, salt and yeast. Mix them, knead "
    "the dough for ten minutes, let it rise for an hour, and then"
)


@dataclass
class Answer:
    pieces: list[str]
    usage: Usage

    @property
    def text(self) -> str:
        return "".join(self.pieces)


class Running:
    """An engine on its thread, and what it emitted by request id."""

    def __init__(self, engine: Engine, items: queue.Queue[Output]) -> None:
        self.engine = engine
        self.items = items
        self.thread = threading.Thread(target=engine.run, daemon=True)
        self._count = 0

    def ask(self, **fields: Any) -> Answer:
        self._count += 1
        request_id = f"r{self._count}"
        self.engine.submit(
            Generation(request_id=request_id, max_tokens=TOKENS, **fields)
        )
        pieces: list[str] = []
        while True:
            output = self.items.get(timeout=WAIT_S)
            if output.request_id != request_id:
                continue
            assert output.error is None, output.error
            response = output.response
            if response is not None and "GeneratedToken" in response:
                generated = response["GeneratedToken"]
                if "ContentToken" in generated:
                    pieces.append(generated["ContentToken"])
                if "Done" in generated:
                    return Answer(pieces, generated["Done"]["usage"])

    def chat(self, messages: list[Message]) -> Answer:
        return self.ask(conversation=messages)


def start(
    model_path: Path, tier: HostCache, context_size: int = 1024, slots: int = 1
) -> Running:
    parameters = InferenceParameters(
        context_size=context_size,
        n_batch=256,
        temperature=0.0,
        penalty_repeat=1.0,
        penalty_presence=0.0,
        penalty_frequency=0.0,
        k_cache_dtype="F16",
        v_cache_dtype="F16",
    )
    items: queue.Queue[Output] = queue.Queue()

    def collect(outputs: list[Output]) -> None:
        for output in outputs:
            items.put(output)

    engine = Engine(
        model_path=str(model_path),
        slots=slots,
        parameters=parameters,
        chat_template_override=GEMMA_CHAT_TEMPLATE,
        on_output=collect,
        n_threads=1,
        host_cache=tier,
    )
    running = Running(engine, items)
    running.thread.start()
    assert engine.ready.wait(WAIT_S)
    return running


def stop(running: Running) -> None:
    running.engine.stop()
    running.thread.join(WAIT_S)
    running.engine.close()


@pytest.fixture(scope="module")
def tiered(model_path: Path) -> Iterator[Running]:
    running = start(model_path, HostCache(BUDGET))
    yield running
    stop(running)


@pytest.fixture(scope="module")
def fresh(model_path: Path) -> Iterator[Running]:
    """The same model and parameters with the tier off: every prompt a slot
    does not hold is evaluated afresh."""
    running = start(model_path, HostCache(0))
    yield running
    stop(running)


def turn(question: str) -> list[Message]:
    return [{"role": "user", "content": question}]


def test_a_restored_conversation_generates_what_a_fresh_evaluation_does(
    tiered: Running, fresh: Running
) -> None:
    tier = tiered.engine.host_cache
    first = tiered.chat(turn(FIRST_QUESTION))
    assert first.text
    # Another conversation takes the only slot: the first goes to the tier.
    tiered.chat(turn(OTHER_QUESTION))
    hits_before = tier.stats().hits
    second_turn: list[Message] = [
        *turn(FIRST_QUESTION),
        {"role": "assistant", "content": first.text},
        {"role": "user", "content": "And what should I eat on the way?"},
    ]
    restored = tiered.chat(second_turn)
    assert tier.stats().hits == hits_before + 1
    # The first turn's prompt and answer came back, not just the template's
    # opening tokens the other conversation shares.
    assert restored.usage["cached_prompt_tokens"] >= first.usage["prompt_tokens"]

    evaluated = fresh.chat(second_turn)
    assert evaluated.usage["cached_prompt_tokens"] <= 1
    assert restored.pieces == evaluated.pieces
    assert len(restored.pieces) > 1


def test_a_restored_raw_prompt_generates_what_a_fresh_evaluation_does(
    tiered: Running, fresh: Running
) -> None:
    tier = tiered.engine.host_cache
    tiered.ask(raw_prompt=RAW_PROMPT)
    tiered.ask(raw_prompt=OTHER_RAW_PROMPT)
    hits_before = tier.stats().hits
    # The state holds the prompt and its answer; this prompt extends the
    # first prompt only, so the restored state is cut back to that.
    longer = RAW_PROMPT + " brakes, and in the end"
    restored = tiered.ask(raw_prompt=longer)
    assert tier.stats().hits == hits_before + 1
    assert restored.usage["cached_prompt_tokens"] > 30

    evaluated = fresh.ask(raw_prompt=longer)
    assert evaluated.usage["cached_prompt_tokens"] <= 1
    assert restored.pieces == evaluated.pieces
    assert len(restored.pieces) > 1


def test_a_restored_answer_generates_what_its_kept_slot_would(
    tiered: Running, fresh: Running
) -> None:
    """A prompt that extends a raw prompt and its generated answer: restored,
    it goes on exactly as on the slot that never lost it.

    (Against an evaluation from scratch the demo model parts after a few
    tokens here, the same with or without the tier: the answer's keys and
    values were computed a token at a time, the fresh evaluation's in one
    batch, and the numbers differ in their last bits.)
    """
    tier = tiered.engine.host_cache
    kept_first = fresh.ask(raw_prompt=RAW_PROMPT)
    first = tiered.ask(raw_prompt=RAW_PROMPT)
    assert first.pieces == kept_first.pieces
    longer = RAW_PROMPT + first.text + " In the end,"
    kept = fresh.ask(raw_prompt=longer)
    assert kept.usage["cached_prompt_tokens"] >= first.usage["prompt_tokens"]

    tiered.ask(raw_prompt=OTHER_RAW_PROMPT)
    hits_before = tier.stats().hits
    restored = tiered.ask(raw_prompt=longer)
    assert tier.stats().hits == hits_before + 1
    assert restored.usage["cached_prompt_tokens"] == kept.usage["cached_prompt_tokens"]
    assert restored.pieces == kept.pieces


def test_a_state_saved_under_another_context_size_is_never_restored(
    model_path: Path, tiered: Running
) -> None:
    """Two engines share one store: the one with another context size finds
    nothing of the other's, which still restores its own state."""
    tier = tiered.engine.host_cache
    question = "Which tools do I need to replace the chain of my bicycle at home?"
    answer = tiered.chat(turn(question))
    tiered.chat(turn(OTHER_QUESTION))
    next_turn: list[Message] = [
        *turn(question),
        {"role": "assistant", "content": answer.text},
        {"role": "user", "content": "How long does that take?"},
    ]
    other = start(model_path, tier, context_size=768)
    try:
        hits_before = tier.stats().hits
        foreign = other.chat(next_turn)
        assert foreign.usage["cached_prompt_tokens"] <= 1
        assert tier.stats().hits == hits_before
    finally:
        stop(other)
    own = tiered.chat(next_turn)
    assert own.usage["cached_prompt_tokens"] >= answer.usage["prompt_tokens"]
    assert tier.stats().hits == hits_before + 1


def test_the_tier_stays_within_its_byte_budget(model_path: Path) -> None:
    """A budget of 1.5 MiB holds one of these states (about 1 MiB each)."""
    tier = HostCache(3 * 2**19)
    running = start(model_path, tier)
    try:
        for index in range(4):
            running.chat(turn(f"Conversation {index}: {FIRST_QUESTION}"))
            stats = tier.stats()
            assert stats.bytes <= stats.budget_bytes
        stats = tier.stats()
        assert stats.saves == 3
        assert stats.evictions >= 1
        assert 1 <= stats.entries < stats.saves
    finally:
        stop(running)


SHARED_SYSTEM_PROMPT = (
    "You are the support assistant of a bicycle shop. You know the opening "
    "hours (9 to 18, closed on Sundays), the repair prices (a flat tyre costs "
    "12 euros, a brake service 25 euros) and the brands we sell. "
) * 2


def test_conversations_sharing_a_system_prompt_each_come_back_whole(
    model_path: Path,
) -> None:
    """Three conversations with one system prompt take turns on two slots:
    every later turn finds its whole history, in a slot or restored.  (A
    state restored for the few tokens another conversation shares after the
    system prompt, then cut back, would lose the conversation it held.)"""
    running = start(model_path, HostCache(BUDGET), slots=2)
    try:
        histories: dict[str, list[Message]] = {
            topic: [{"role": "system", "content": SHARED_SYSTEM_PROMPT}]
            # The first and the third share a word more than the second:
            # "a flat tyre", "a new bike".
            for topic in ("a flat tyre", "brakes", "a new bike")
        }
        previous: dict[str, int] = {}
        for turn_index in range(3):
            for topic, history in histories.items():
                history.append(
                    {
                        "role": "user",
                        "content": f"Question {turn_index + 1} about {topic}?",
                    }
                )
                answer = running.chat(list(history))
                history.append({"role": "assistant", "content": answer.text})
                if topic in previous:
                    assert answer.usage["cached_prompt_tokens"] >= previous[topic], (
                        topic,
                        turn_index,
                        answer.usage,
                    )
                previous[topic] = answer.usage["prompt_tokens"]
        assert running.engine.host_cache.stats().hits >= 4
    finally:
        stop(running)
