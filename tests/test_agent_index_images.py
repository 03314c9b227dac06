"""Agents that serve images in the routing index (``balancer.agent_index``):
a request with images is decided over them only, as ``routing.serving_images``
and ``routing.decide`` decide it over the whole fleet."""

from __future__ import annotations

import pytest

from balancer.agent_index import AgentIndex
from balancer.registry import AgentRecord
from balancer.routing import NoAgentServesImages
from tests.support.agent_records import chain, record


def index_of(*records: AgentRecord) -> AgentIndex:
    index = AgentIndex()
    for seq, item in enumerate(records, start=1):
        index.update(item, seq=seq, now=0.0)
    return index


def test_a_request_with_images_goes_to_image_serving_agents_least_busy_first() -> None:
    index = index_of(
        record("text", images=False),
        record("old", images=None),
        record("vision-busy", images=True, processing=3),
        record("vision", images=True, processing=1),
    )
    assert index.decide("default", [], images=True).order == [
        "vision",
        "vision-busy",
    ]
    # Text goes anywhere, the idle agents first.
    assert index.decide("default", []).order[:2] == ["old", "text"]


def test_the_cache_match_for_images_is_among_image_serving_agents_only() -> None:
    conversation = chain(["hi", "hello", "how"])
    index = index_of(
        # The longest match is on an agent that cannot read the images.
        record("text", images=False, idle=[conversation]),
        record("vision-short", images=True, idle=[conversation[:1]]),
        record("vision", images=True),
    )
    decision = index.decide("default", conversation, images=True)
    assert decision.order == ["vision-short", "vision"]
    assert decision.matched == 1
    assert index.decide("default", conversation).order[0] == "text"


def test_ready_agents_none_serving_images_refuse_a_request_with_images() -> None:
    index = index_of(record("text", images=False), record("old", images=None))
    with pytest.raises(NoAgentServesImages):
        index.decide("default", [], images=True)


def test_with_no_agent_ready_a_request_with_images_waits() -> None:
    # Agents still loading (no slots) may yet serve images: no refusal.
    index = index_of(record("loading", images=None, slots_total=0))
    assert index.decide("default", [], images=True).order == []
    assert AgentIndex().decide("default", [], images=True).order == []


def test_excluded_image_servers_leave_a_refusal_when_the_rest_serve_none() -> None:
    index = index_of(record("text", images=False), record("vision", images=True))
    with pytest.raises(NoAgentServesImages):
        index.decide("default", [], images=True, exclude={"vision"})
    # With only image servers, all excluded, nothing is ready: it waits.
    index = index_of(record("vision", images=True))
    assert index.decide("default", [], images=True, exclude={"vision"}).order == []


def test_an_agent_that_stops_serving_images_leaves_their_order() -> None:
    index = index_of(record("text", images=False), record("vision", images=True))
    index.update(record("vision", images=False), seq=10, now=0.0)
    with pytest.raises(NoAgentServesImages):
        index.decide("default", [], images=True)
    index.update(record("text", images=True), seq=11, now=0.0)
    assert index.decide("default", [], images=True).order == ["text"]


def test_load_changes_reorder_the_image_serving_agents() -> None:
    index = index_of(record("a", images=True, processing=1), record("b", images=True))
    assert index.decide("default", [], images=True).order == ["b", "a"]
    index.update(record("b", images=True, processing=3), seq=10, now=0.0)
    assert index.decide("default", [], images=True).order == ["a", "b"]
    # This process's own claims count too.
    index.claimed("a", +3)
    index.claimed("a", +1)
    assert index.decide("default", [], images=True).order == ["b", "a"]


def test_a_removed_image_server_is_no_longer_offered() -> None:
    index = index_of(record("text", images=False), record("vision", images=True))
    index.remove("vision")
    with pytest.raises(NoAgentServesImages):
        index.decide("default", [], images=True)
    index.remove("text")
    assert index.decide("default", [], images=True).order == []


def test_only_image_serving_agents_with_free_slots_widen_an_image_claim() -> None:
    index = index_of(
        record("text", images=False),
        record("vision", images=True, processing=1),
        record("full", images=True, processing=4),
    )
    assert index.with_free_slots("default", images=True) == ["vision"]
    assert index.with_free_slots("default") == ["text", "vision"]


def test_an_agent_moving_to_another_pool_serves_images_there_only() -> None:
    index = index_of(record("vision", images=True))
    index.update(record("vision", images=True, pool="other"), seq=10, now=0.0)
    assert index.decide("default", [], images=True).order == []
    assert index.decide("other", [], images=True).order == ["vision"]


def test_round_robin_turns_over_image_serving_agents_only() -> None:
    index = index_of(
        record("a", images=True), record("b", images=False), record("c", images=True)
    )
    firsts = {
        index.decide("default", [], images=True, policy="round_robin", turn=t).order[0]
        for t in range(4)
    }
    assert firsts == {"a", "c"}
