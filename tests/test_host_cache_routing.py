"""Routing across the fleet with host tiers (``balancer.routing``): an agent
whose host-memory tier holds a conversation gets it back, just below an agent
whose slot holds as much."""

from __future__ import annotations

from balancer.routing import (
    Candidate,
    conversation_prefix,
    decide,
    host_matched_length,
)

HISTORY = [
    {"role": "system", "content": "You help with bicycles."},
    {"role": "user", "content": "My tyre is flat."},
    {"role": "assistant", "content": "Patch it or replace the tube."},
    {"role": "user", "content": "How do I patch it?"},
]
PREFIX = conversation_prefix(HISTORY)


def test_the_host_match_is_the_deepest_hash_the_tier_holds() -> None:
    assert host_matched_length(PREFIX, frozenset(PREFIX[:3])) == 3
    assert host_matched_length(PREFIX, frozenset({PREFIX[1]})) == 2
    assert host_matched_length(PREFIX, frozenset({"other"})) == 0
    assert host_matched_length([], frozenset(PREFIX)) == 0


def test_a_conversation_goes_to_the_agent_whose_host_tier_holds_it() -> None:
    decision = decide(
        [
            Candidate("idle", 4, 0),
            Candidate("holds-it", 4, 1, host_prefixes=frozenset(PREFIX[:3])),
        ],
        PREFIX,
    )
    assert decision.order == ["holds-it", "idle"]
    assert decision.matched == 3
    assert decision.why == "host-tier cache match of 3 prefix blocks"


def test_a_slot_match_ranks_above_a_host_tier_match_of_the_same_length() -> None:
    decision = decide(
        [
            Candidate("in-host", 4, 0, host_prefixes=frozenset(PREFIX[:3])),
            Candidate("in-slot", 4, 1, idle_prefixes=[PREFIX[:3]]),
        ],
        PREFIX,
    )
    assert decision.order[0] == "in-slot"
    assert decision.why == "slot cache match of 3 prefix blocks"


def test_a_longer_host_tier_match_ranks_above_a_shorter_slot_match() -> None:
    """A slot that holds the system prompt only saves less than a tier that
    holds the whole conversation."""
    decision = decide(
        [
            Candidate("system-prompt", 4, 0, idle_prefixes=[PREFIX[:1]]),
            Candidate("conversation", 4, 1, host_prefixes=frozenset(PREFIX[:3])),
        ],
        PREFIX,
    )
    assert decision.order[0] == "conversation"
    assert decision.matched == 3
    assert "host-tier" in decision.why


def test_a_host_tier_match_on_a_busy_agent_is_skipped_like_a_slot_match() -> None:
    decision = decide(
        [
            Candidate("idle", 4, 0),
            Candidate("busy", 4, 3, host_prefixes=frozenset(PREFIX)),
        ],
        PREFIX,
    )
    assert decision.order[0] == "idle"
    assert "skipped" in decision.why
