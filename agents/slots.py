"""A slot's state, which free slot a prompt goes to, and stop sequences.

Plain data and functions, with no llama.cpp in them: the engine owns the
slots and calls these on its own thread.
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from agents.jobs import Generation
from agents.positions import PositionKey


@dataclass
class Slot:
    """One llama.cpp sequence of the engine, with what it holds and serves."""

    seq_id: int
    # What the sequence holds, one key per position, in order: token ids,
    # and ``ImagePosition``s where an image was evaluated (agents.positions).
    cache: list[PositionKey] = field(default_factory=list)
    job: Generation | None = None
    # The llama.cpp sampler chain of the request it serves.
    sampler: Any = None
    # The prompt's positions not yet evaluated: text goes into the shared
    # batch, an image is evaluated alone between two batch steps.
    pending: list[PositionKey] = field(default_factory=list)
    next_token: int = -1
    batch_index: int = -1
    # The prompt's text tokens and image tokens (usage counts them apart).
    prompt_tokens: int = 0
    image_tokens: int = 0
    cached_tokens: int = 0
    generated: int = 0
    decoder: codecs.IncrementalDecoder | None = None
    held_text: str = ""
    text: str = ""
    # Routing hashes of what the cache holds (see balancer.routing).
    prefix: list[str] = field(default_factory=list)
    started_at: float = 0.0
    # When the slot last finished a request (0: never), for choosing the
    # least recently used one.
    released_at: float = 0.0
    # Whether this request's output has named the slot yet.
    told_slot: bool = False

    @property
    def busy(self) -> bool:
        return self.job is not None


def common_prefix_length(
    left: Sequence[PositionKey], right: Sequence[PositionKey]
) -> int:
    length = min(len(left), len(right))
    for index in range(length):
        if left[index] != right[index]:
            return index
    return length


# A free slot's cache is reused when the prefix it shares with the prompt is
# at least this share of the prompt or of what the slot holds; below both, the
# prompt goes to the least recently used slot instead.
REUSE_SHARE = 0.5


def choose_slot(free: list[Slot], prompt: Sequence[PositionKey]) -> Slot:
    """The free slot a prompt should go to.

    The slot whose cache shares the longest prefix with the prompt, when that
    prefix is a good part of the prompt or of the slot's cache: the next turn
    of the conversation it holds, a longer raw prompt that extends it, a
    regenerated answer, a long shared system prompt.  Otherwise the least
    recently used slot (one never used first): taking the best slot for a few
    common tokens (a chat template's opening) would evict another
    conversation's cache while an idle slot holds nothing worth keeping.  Among
    slots that match equally, the least recently used.
    """
    by_age = sorted(free, key=_age)
    shared = {slot.seq_id: common_prefix_length(slot.cache, prompt) for slot in by_age}
    best = max(by_age, key=lambda slot: shared[slot.seq_id])
    reused = shared[best.seq_id]
    if reused > 0 and reused >= REUSE_SHARE * min(len(prompt), len(best.cache)):
        return best
    return by_age[0]


def _age(slot: Slot) -> tuple[float, int]:
    return (slot.released_at, slot.seq_id)


def least_recently_used(free: list[Slot]) -> Slot:
    """The free slot used longest ago (one never used first)."""
    return min(free, key=_age)


def split_on_stop(text: str, stops: list[str]) -> tuple[str, str, bool]:
    """Split ``text`` into what may be sent now and what must be held back.

    Returns (sendable, held, stopped).  Text that could be the start of a stop
    sequence is held until the next token tells whether it is one.
    """
    if not stops:
        return text, "", False
    first = -1
    for stop in stops:
        position = text.find(stop)
        if position != -1 and (first == -1 or position < first):
            first = position
    if first != -1:
        return text[:first], "", True
    hold = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:size]):
                hold = max(hold, size)
                break
    return text[: len(text) - hold], text[len(text) - hold :], False
