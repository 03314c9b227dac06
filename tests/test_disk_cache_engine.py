"""The disk tier on a real engine: a conversation saved to disk comes back
after the engine (the agent) restarts, and generates what a fresh evaluation
of its prompt generates, token for token; a corrupt file or one saved under
another context shape is never loaded.

Engines of one slot run in this process on the demo model, greedy (see
``test_host_cache_engine``, whose helpers these are).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from agents.disk_cache import DiskCache, llama_runtime
from agents.host_cache import HostCache
from balancer.contract import Message
from tests.test_host_cache_engine import (
    BUDGET,
    FIRST_QUESTION,
    OTHER_QUESTION,
    Running,
    start,
    stop,
    turn,
)

DISK_BUDGET = 256 * 2**20


@pytest.fixture(scope="module")
def fresh(model_path: Path) -> Iterator[Running]:
    """The same model and parameters with no tier at all."""
    running = start(model_path, HostCache(0))
    yield running
    stop(running)


def tiers(directory: Path) -> HostCache:
    """An agent's tiers as a (re)started agent builds them: empty host
    memory over the directory's files."""
    host = HostCache(BUDGET)
    host.attach_disk(DiskCache(directory, DISK_BUDGET, runtime=llama_runtime()))
    return host


def saved_conversation(
    model_path: Path, directory: Path, question: str
) -> tuple[list[Message], int]:
    """Run one turn of ``question``, have another conversation take the slot
    (the first is saved, to disk too), stop the engine; the next turn, and
    the first turn's prompt tokens."""
    running = start(model_path, tiers(directory))
    try:
        first = running.chat(turn(question))
        running.chat(turn(OTHER_QUESTION))
        disk = running.engine.host_cache.disk
        assert disk is not None and disk.flush(60)
    finally:
        stop(running)
    next_turn: list[Message] = [
        *turn(question),
        {"role": "assistant", "content": first.text},
        {"role": "user", "content": "And what should I eat on the way?"},
    ]
    return next_turn, first.usage["prompt_tokens"]


def test_a_conversation_comes_back_from_disk_after_a_restart(
    model_path: Path, fresh: Running, tmp_path: Path
) -> None:
    next_turn, first_prompt = saved_conversation(model_path, tmp_path, FIRST_QUESTION)
    restarted = start(model_path, tiers(tmp_path))
    try:
        restored = restarted.chat(next_turn)
        stats = restarted.engine.host_cache.stats()
        assert (stats.disk_hits, stats.hits) == (1, 1)
    finally:
        stop(restarted)
    # The first turn's prompt and answer came back from the file.
    assert restored.usage["cached_prompt_tokens"] > first_prompt
    evaluated = fresh.chat(next_turn)
    assert evaluated.usage["cached_prompt_tokens"] <= 1
    assert restored.pieces == evaluated.pieces
    assert len(restored.pieces) > 1


def test_a_corrupt_file_is_skipped_never_loaded(
    model_path: Path, fresh: Running, tmp_path: Path
) -> None:
    question = "Which tools do I need to replace the chain of my bicycle at home?"
    next_turn, _ = saved_conversation(model_path, tmp_path, question)
    files = sorted(tmp_path.glob("*.kv"))
    assert files
    for path in files:
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x55  # one byte of the state
        path.write_bytes(bytes(data))
    restarted = start(model_path, tiers(tmp_path))
    try:
        answer = restarted.chat(next_turn)
        tier = restarted.engine.host_cache
        assert tier.stats().disk_hits == 0
        assert tier.disk is not None and tier.disk.stats().corrupt >= 1
    finally:
        stop(restarted)
    assert answer.usage["cached_prompt_tokens"] <= 1
    assert answer.pieces == fresh.chat(next_turn).pieces
    assert not any(path.exists() for path in files)


def test_a_file_saved_under_another_context_size_is_never_loaded(
    model_path: Path, tmp_path: Path
) -> None:
    next_turn, _ = saved_conversation(model_path, tmp_path, FIRST_QUESTION)
    files = sorted(tmp_path.glob("*.kv"))
    other = start(model_path, tiers(tmp_path), context_size=768)
    try:
        answer = other.chat(next_turn)
        assert other.engine.host_cache.stats().disk_hits == 0
    finally:
        stop(other)
    assert answer.usage["cached_prompt_tokens"] <= 1
    # Left alone: it is another engine's to load.
    assert all(path.exists() for path in files)
