"""Routing requests with images: fingerprints, and agents that serve images.

Framework-free parts (``routing``, ``images``) with plain values; the
dispatcher's decision with agent records as the registry reads them (their
reports are what an agent would send; nothing is dispatched).
"""

from __future__ import annotations

from typing import Any

import pytest

from balancer import images, registry
from balancer.dispatch import Dispatcher
from balancer.images import data_url, image_digest, remember_digest, url_digest
from balancer.routing import (
    Candidate,
    NoAgentServesImages,
    conversation_prefix,
    decide,
    matched_length,
    served_prefix,
    serving_images,
)
from balancer.stream import GenerationRefused

CAT = data_url("image/png", b"\x89PNG\r\n\x1a\n cat")
DOG = data_url("image/png", b"\x89PNG\r\n\x1a\n dog")


def asking(*urls: str, text: str = "What is this?") -> dict[str, Any]:
    parts: list[dict[str, Any]] = [{"type": "text", "text": text}]
    parts += [{"type": "image_url", "image_url": {"url": url}} for url in urls]
    return {"role": "user", "content": parts}


def test_the_same_image_next_turn_matches_what_the_slot_served() -> None:
    turn_one = [asking(CAT)]
    held = served_prefix({"conversation_history": turn_one}, "A cat.")
    same = conversation_prefix(
        [*turn_one, {"role": "assistant", "content": "A cat."}, asking(text="Sure?")]
    )
    assert matched_length(same, held) == 2


def test_another_image_does_not_match() -> None:
    held = served_prefix({"conversation_history": [asking(CAT)]}, "A cat.")
    other = conversation_prefix(
        [asking(DOG), {"role": "assistant", "content": "A cat."}, asking(text="Sure?")]
    )
    assert matched_length(other, held) == 0


def test_images_count_in_order_and_in_number() -> None:
    assert conversation_prefix([asking(CAT, DOG)]) != conversation_prefix(
        [asking(DOG, CAT)]
    )
    assert conversation_prefix([asking(CAT)]) != conversation_prefix([asking(CAT, CAT)])
    # The text alone differs from the text with an image.
    assert conversation_prefix([asking(CAT)]) != conversation_prefix([asking()])


def test_a_text_only_message_hashes_as_before_images() -> None:
    # Parts of text only, or a string: the same chain as plain text.
    assert conversation_prefix([asking()]) == conversation_prefix(
        [{"role": "user", "content": "What is this?"}]
    )


def test_the_fingerprint_is_of_the_decoded_bytes() -> None:
    assert url_digest(CAT) == image_digest(b"\x89PNG\r\n\x1a\n cat")


def test_a_noted_fingerprint_is_not_computed_again() -> None:
    # What validation noted is what routing uses: the image is decoded once.
    url = data_url("image/png", b"\x89PNG\r\n\x1a\n noted")
    remember_digest(url, "noted-by-validation")
    assert url_digest(url) == "noted-by-validation"


def test_the_fingerprint_cache_is_bounded() -> None:
    for index in range(images._DIGESTS_KEPT + 10):
        remember_digest(f"data:image/png;base64,{index}", str(index))
    assert len(images._DIGESTS) == images._DIGESTS_KEPT


def test_only_image_serving_agents_are_candidates() -> None:
    candidates = [
        Candidate("text-only", 4, 0),
        Candidate("vision", 4, 3, serves_images=True),
    ]
    assert [c.agent_id for c in serving_images(candidates)] == ["vision"]
    # Busier, but the only one that can read the image.
    decision = decide(serving_images(candidates), [])
    assert decision.order == ["vision"]


def test_ready_agents_none_serving_images_refuse_at_once() -> None:
    with pytest.raises(NoAgentServesImages):
        serving_images([Candidate("text-only", 4, 0)])


def test_with_no_agent_ready_a_request_with_images_waits() -> None:
    # None yet (scale from zero), or still loading (no slots): buffer.
    assert serving_images([]) == []
    assert serving_images([Candidate("loading", 0, 0)]) == []


def record(agent_id: str, **report: Any) -> registry.AgentRecord:
    return registry.AgentRecord(
        id=agent_id,
        name=agent_id,
        channel=f"channel-{agent_id}",
        slots_total=2,
        slots_processing=0,
        slots_claimed=0,
        report={"slots": [], **report},
    )


def test_the_dispatcher_sends_images_to_agents_reporting_serves_images() -> None:
    dispatcher = Dispatcher()
    agents = [
        record("old"),
        record("text", serves_images=False),
        record("vision", serves_images=True),
    ]
    assert dispatcher._decide(agents, [], images=True).order == ["vision"]
    # Text goes anywhere.
    assert sorted(dispatcher._decide(agents, [], images=False).order) == [
        "old",
        "text",
        "vision",
    ]


def test_the_dispatcher_refuses_images_when_no_agent_serves_them() -> None:
    dispatcher = Dispatcher()
    # An agent from before images reports no serves_images: it serves none.
    with pytest.raises(GenerationRefused) as refused:
        dispatcher._decide(
            [record("old"), record("text", serves_images="yes")], [], images=True
        )
    assert refused.value.code == 400
    assert refused.value.variant == "MultimodalNotSupported"
    assert refused.value.description.startswith("MultimodalNotSupported: ")
