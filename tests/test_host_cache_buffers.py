"""A save that writes into a buffer a restored state left (``HostCache.
take_buffer``) restores exactly: the buffer is larger than the state and full
of another state's bytes, and the conversation restored from it generates
what a fresh evaluation does, token for token.
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from pathlib import Path

import pytest

from agents.host_cache import HostCache, buffer_size
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


@pytest.fixture(scope="module")
def fresh(model_path: Path) -> Iterator[Running]:
    running = start(model_path, HostCache(0))
    yield running
    stop(running)


def test_fresh_buffers_leave_room_for_a_longer_state() -> None:
    assert buffer_size(1) == 2**16
    assert buffer_size(8 * 2**20) == 9 * 2**20
    assert buffer_size(8 * 2**20) >= 8 * 2**20 + 2**20


def test_a_state_saved_into_a_reused_buffer_restores_exactly(
    model_path: Path, fresh: Running
) -> None:
    tier = HostCache(BUDGET)
    running = start(model_path, tier)
    try:
        first = running.chat(turn(FIRST_QUESTION))
        # As if a restored state had left it: larger than the state to come,
        # and dirty.
        dirty = (ctypes.c_uint8 * (16 * 2**20))()
        ctypes.memset(dirty, 0xAB, len(dirty))
        tier._spare.append(dirty)
        running.chat(turn(OTHER_QUESTION))  # saves the first into ``dirty``
        assert tier.stats().buffers_reused == 1
        next_turn: list[Message] = [
            *turn(FIRST_QUESTION),
            {"role": "assistant", "content": first.text},
            {"role": "user", "content": "And what should I eat on the way?"},
        ]
        restored = running.chat(next_turn)
        assert tier.stats().hits == 1
        assert restored.usage["cached_prompt_tokens"] >= first.usage["prompt_tokens"]
    finally:
        stop(running)
    evaluated = fresh.chat(next_turn)
    assert evaluated.usage["cached_prompt_tokens"] <= 1
    assert restored.pieces == evaluated.pieces
    assert len(restored.pieces) > 1
