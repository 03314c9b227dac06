from __future__ import annotations

from balancer.routing import (
    TEXT_BLOCK,
    Candidate,
    conversation_prefix,
    decide,
    matched_length,
    served_prefix,
    text_prefix,
)

TURN_ONE = [{"role": "user", "content": "Hello"}]


def test_next_turn_shares_the_prefix_of_what_the_slot_served() -> None:
    served = served_prefix({"conversation_history": TURN_ONE}, "Hi!")
    next_turn = conversation_prefix(
        [
            *TURN_ONE,
            {"role": "assistant", "content": " Hi! "},
            {"role": "user", "content": "How are you?"},
        ]
    )
    assert matched_length(next_turn, served) == 2


def test_raw_prompt_blocks_cover_whole_blocks_only() -> None:
    text = "a" * (TEXT_BLOCK * 2 + 10)
    assert len(text_prefix(text)) == 2
    assert text_prefix(text)[:1] == text_prefix("a" * TEXT_BLOCK)


def test_cache_match_wins_over_a_slightly_less_busy_agent() -> None:
    prefix = conversation_prefix(TURN_ONE * 3)
    decision = decide(
        [
            Candidate("idle", 4, 0),
            Candidate("warm", 4, 1, idle_prefixes=[prefix[:2]]),
        ],
        prefix,
    )
    assert decision.order == ["warm", "idle"]
    assert decision.matched == 2


def test_load_wins_when_the_matching_agent_is_much_busier() -> None:
    prefix = conversation_prefix(TURN_ONE * 3)
    decision = decide(
        [
            Candidate("idle", 4, 0),
            Candidate("warm", 4, 3, idle_prefixes=[prefix]),  # 0.75 vs 0
        ],
        prefix,
        max_load_gap=0.5,
    )
    assert decision.order == ["idle", "warm"]
    assert "skipped" in decision.why


def test_a_match_on_a_half_busy_small_agent_still_wins() -> None:
    prefix = conversation_prefix(TURN_ONE)
    decision = decide(
        [Candidate("idle", 2, 0), Candidate("warm", 2, 1, [prefix])], prefix
    )
    assert decision.order[0] == "warm"


def test_least_busy_policy_ignores_the_cache() -> None:
    prefix = conversation_prefix(TURN_ONE)
    decision = decide(
        [Candidate("a", 2, 1, [prefix]), Candidate("b", 2, 0)],
        prefix,
        policy="least_busy",
    )
    assert decision.order == ["b", "a"]


def test_round_robin_rotates() -> None:
    candidates = [Candidate("a", 1, 0), Candidate("b", 1, 0)]
    first = decide(candidates, [], policy="round_robin", turn=0).order[0]
    second = decide(candidates, [], policy="round_robin", turn=1).order[0]
    assert {first, second} == {"a", "b"}


def test_agents_without_slots_are_not_candidates() -> None:
    assert decide([Candidate("loading", 0, 0)], []).order == []


def test_a_new_conversation_goes_where_a_slot_holds_nothing() -> None:
    # Both agents idle: the one whose slots are all empty, not the one that
    # would have to evict a conversation's cache to take it.
    held = conversation_prefix(TURN_ONE)
    decision = decide(
        [
            Candidate("a-holds-one", 2, 0, idle_prefixes=[held, []]),
            Candidate("b-empty", 2, 0, idle_prefixes=[[], []]),
        ],
        conversation_prefix([{"role": "user", "content": "Something else"}]),
    )
    assert decision.order == ["b-empty", "a-holds-one"]
    assert decision.why == "least busy (no cache match)"


def test_load_still_comes_before_empty_slots() -> None:
    decision = decide(
        [
            Candidate("empty-but-busier", 2, 1, idle_prefixes=[[]]),
            Candidate("idle", 2, 0, idle_prefixes=[["x"], ["y"]]),
        ],
        [],
    )
    assert decision.order == ["idle", "empty-but-busier"]
