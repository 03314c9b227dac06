"""The routing index (``balancer.agent_index``): the decisions of
``routing.decide`` over the whole fleet, from sorted and indexed memory."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from balancer.agent_index import AgentIndex
from balancer.host_tier import host_prefixes
from balancer.registry import AgentRecord
from balancer.routing import Candidate, Decision, decide
from tests.support.agent_records import chain, record

WORDS = ["hi", "hello", "how", "are", "you"]


def old_decision(
    records: list[AgentRecord], prefix: list[str], **options: Any
) -> Decision:
    """What the dispatcher decided before the index: every agent's report
    into ``routing.decide``."""
    candidates = [
        Candidate(
            r.id,
            r.slots_total,
            r.slots_busy,
            [s["prefix"] for s in r.report.get("slots", []) if not s["busy"]],
            host_prefixes(r.report),
        )
        for r in records
    ]
    return decide(candidates, prefix, **options)


conversations = st.lists(st.sampled_from(WORDS), min_size=0, max_size=5)


@st.composite
def fleets(draw: st.DrawFn) -> list[AgentRecord]:
    records = []
    for number in range(draw(st.integers(min_value=0, max_value=12))):
        total = draw(st.integers(min_value=0, max_value=6))
        processing = draw(st.integers(min_value=0, max_value=total))
        idle = [chain(draw(conversations)) for _ in range(total - processing)]
        host = draw(st.one_of(st.none(), st.lists(conversations, max_size=3)))
        records.append(
            record(
                f"agent-{number:02}",
                slots_total=total,
                processing=processing,
                idle=idle,
                host=None if host is None else [h for c in host for h in chain(c)],
            )
        )
    return records


@settings(max_examples=300, deadline=None)
@given(
    fleet=fleets(),
    words=conversations,
    policy=st.sampled_from(["prefix", "least_busy", "round_robin"]),
    gap=st.sampled_from([0.0, 0.25, 0.5, 1.0]),
    turn=st.integers(min_value=0, max_value=50),
    limit=st.integers(min_value=1, max_value=14),
    excluded=st.sets(st.integers(min_value=0, max_value=12), max_size=3),
)
def test_the_index_decides_as_routing_decides_over_every_agent(
    *,
    fleet: list[AgentRecord],
    words: list[str],
    policy: str,
    gap: float,
    turn: int,
    limit: int,
    excluded: set[int],
) -> None:
    index = AgentIndex()
    for agent in fleet:
        index.update(agent, seq=1, now=0.0)
    exclude = {f"agent-{n:02}" for n in excluded}
    prefix = chain(words)
    options: dict[str, Any] = {"policy": policy, "max_load_gap": gap, "turn": turn}
    expected = old_decision(
        [r for r in fleet if r.id not in exclude], prefix, **options
    )
    got = index.decide("default", prefix, exclude=exclude, limit=limit, **options)
    assert got.order == expected.order[:limit]
    assert (got.matched, got.why) == (expected.matched, expected.why)


def test_the_longest_cached_conversation_wins_and_then_the_least_busy() -> None:
    index = AgentIndex()
    talk = chain(["hi", "how", "are"])
    index.update(record("short", idle=[talk[:1]]), seq=1, now=0)
    index.update(record("long-busy", processing=1, idle=[talk[:2]]), seq=1, now=0)
    index.update(record("long-idle", idle=[talk[:2]]), seq=1, now=0)
    index.update(record("empty"), seq=1, now=0)
    decision = index.decide("default", talk, limit=3)
    assert decision.order[0] == "long-idle"
    assert decision.matched == 2
    assert len(decision.order) == 3


def test_a_report_replaces_the_agents_cached_prefixes() -> None:
    index = AgentIndex()
    first, second = chain(["hi"]), chain(["hello"])
    index.update(record("a", idle=[first]), seq=1, now=0)
    index.update(record("b"), seq=1, now=0)
    assert index.decide("default", first).matched == 1
    index.update(record("a", idle=[second]), seq=2, now=0)
    assert index.decide("default", first).matched == 0
    assert index.decide("default", second).order[0] == "a"


def test_an_older_report_than_the_one_held_changes_nothing() -> None:
    index = AgentIndex()
    index.update(record("a", processing=3), seq=5, now=0)
    assert not index.update(record("a", processing=0), seq=4, now=1)
    assert index.busy("a") == 3


def test_claims_of_this_process_move_an_agent_down_until_given_back() -> None:
    index = AgentIndex()
    index.update(record("a", slots_total=2), seq=1, now=0)
    index.update(record("b", slots_total=2), seq=1, now=0)
    assert index.decide("default", [], policy="least_busy").order == ["a", "b"]
    index.claimed("a", +1)
    assert index.decide("default", [], policy="least_busy").order == ["b", "a"]
    index.claimed("a", +1)
    assert index.with_free_slots("default") == ["b"]
    index.claimed("a", -1)
    index.claimed("a", -1)
    assert index.decide("default", [], policy="least_busy").order == ["a", "b"]


def test_removed_and_silent_agents_leave_every_structure() -> None:
    index = AgentIndex()
    talk = chain(["hi"])
    index.update(record("gone", idle=[talk], host=talk), seq=1, now=0)
    index.update(record("silent", idle=[talk]), seq=1, now=0)
    index.update(record("alive"), seq=1, now=5)
    index.remove("gone")
    assert index.expire(heard_before=3) == ["silent"]
    assert index.ids() == {"alive"}
    decision = index.decide("default", talk)
    assert (decision.order, decision.matched) == (["alive"], 0)


def test_agents_of_another_pool_are_not_offered() -> None:
    index = AgentIndex()
    index.update(record("a", pool="default"), seq=1, now=0)
    index.update(record("b", pool="large"), seq=1, now=0)
    assert index.decide("large", []).order == ["b"]
    index.update(record("b", pool="default"), seq=2, now=0)
    assert index.decide("large", []).order == []
    assert sorted(index.decide("default", []).order) == ["a", "b"]


def test_agents_to_avoid_come_last() -> None:
    index = AgentIndex()
    for name in ("a", "b", "c"):
        index.update(record(name), seq=1, now=0)
    decision = index.decide("default", [], avoid={"a"}, limit=2)
    assert decision.order == ["b", "c", "a"]
