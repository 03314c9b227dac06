"""Which free slot of an agent a prompt goes to (``agents.slots.choose_slot``).

Token lists stand for what each slot's KV cache holds; end to end, the
balancer test ``test_a_new_conversation_leaves_an_idle_conversation_cached``
checks the same on a real agent.
"""

from __future__ import annotations

from agents.slots import Slot, choose_slot

TEMPLATE = [2, 105, 2364, 107]  # a chat template's opening, common to all
CONVERSATION_A = [*TEMPLATE, *range(1000, 1100)]
CONVERSATION_B = [*TEMPLATE, *range(2000, 2100)]


def slot(seq_id: int, cache: list[int], released_at: float) -> Slot:
    return Slot(seq_id=seq_id, cache=list(cache), released_at=released_at)


def test_a_new_conversation_takes_the_empty_slot_not_anothers_cache() -> None:
    holding_a = slot(0, CONVERSATION_A, released_at=5.0)
    empty = slot(1, [], released_at=0.0)
    assert choose_slot([holding_a, empty], CONVERSATION_B) is empty


def test_a_new_conversation_evicts_the_least_recently_used() -> None:
    older = slot(0, CONVERSATION_A, released_at=1.0)
    newer = slot(1, [*TEMPLATE, *range(3000, 3100)], released_at=2.0)
    assert choose_slot([newer, older], CONVERSATION_B) is older


def test_the_next_turn_returns_to_the_slot_that_holds_its_conversation() -> None:
    holding_a = slot(0, CONVERSATION_A, released_at=9.0)
    older = slot(1, CONVERSATION_B, released_at=1.0)
    empty = slot(2, [], released_at=0.0)
    next_turn = [*CONVERSATION_A, *range(5000, 5020)]
    assert choose_slot([older, empty, holding_a], next_turn) is holding_a


def test_a_long_prompt_that_extends_a_whole_cache_reuses_it() -> None:
    # The cache is under half of the prompt, but all of it is reused.
    extended = slot(0, CONVERSATION_A, released_at=9.0)
    empty = slot(1, [], released_at=0.0)
    prompt = [*CONVERSATION_A, *range(6000, 6400)]
    assert choose_slot([empty, extended], prompt) is extended


def test_equal_matches_go_to_the_least_recently_used() -> None:
    system = [*TEMPLATE, *range(7000, 7200)]  # a long shared system prompt
    recent = slot(0, [*system, *range(1, 50)], released_at=8.0)
    old = slot(1, [*system, *range(50, 100)], released_at=3.0)
    assert choose_slot([recent, old], [*system, 42, 43]) is old
