"""The pieces of a prompt with images that need no model: position keys,
how much of a slot's cache a prompt keeps, and message contents as text."""

from __future__ import annotations

import base64

import pytest

from agents.image_prompt import (
    content_with_markers,
    decode_conversation_images,
    has_images,
)
from agents.multimodal import ImageDecodingFailed
from agents.positions import (
    ImagePosition,
    PositionKey,
    image_safe,
    leading_text,
    reusable_prefix,
    text_only,
    text_run,
    text_tokens,
)
from agents.slots import Slot, choose_slot

MARKER = "<__media__>"
IMAGE: list[PositionKey] = [ImagePosition("a:64x64", n) for n in range(4)]
OTHER: list[PositionKey] = [ImagePosition("b:64x64", n) for n in range(4)]


def image_url(url: str) -> dict[str, object]:
    return {"type": "image_url", "image_url": {"url": url}}


def test_a_kept_prefix_never_ends_inside_an_image() -> None:
    prompt: list[PositionKey] = [1, 2, *IMAGE, 3, 4]
    assert image_safe(prompt, 4) == 2
    assert image_safe(prompt, 2) == 2
    assert image_safe(prompt, 6) == 6
    assert reusable_prefix([1, 2, *IMAGE, 3], prompt, limit=len(prompt) - 1) == 7
    assert reusable_prefix([1, 2, *OTHER, 3], prompt) == 2


def test_text_runs_stop_at_images() -> None:
    pending: list[PositionKey] = [5, 6, *IMAGE, 7]
    assert text_run(pending, 10) == 2
    assert text_run(pending, 1) == 1
    assert text_run(IMAGE, 10) == 0
    assert text_tokens(pending) == [5, 6, 7]
    assert leading_text(pending) == [5, 6]
    assert text_only([5, 6]) == [5, 6]
    assert text_only(pending) is None


def test_a_slot_holding_the_same_image_is_chosen_for_the_next_turn() -> None:
    holding = Slot(seq_id=0, cache=[1, 2, *IMAGE, 3, 4], released_at=2.0)
    other = Slot(seq_id=1, cache=[1, 2, *OTHER, 3, 4], released_at=1.0)
    assert choose_slot([other, holding], [1, 2, *IMAGE, 3, 4, 9]) is holding
    assert choose_slot([other, holding], [1, 2, *OTHER, 3, 4, 9]) is other


def test_image_parts_become_markers_and_client_markers_are_removed() -> None:
    content = [
        {"type": "text", "text": "Look at "},
        image_url("data:image/png;base64,AAAA"),
        {"type": "text", "text": " and <__me<__media__>dia__> this"},
    ]
    assert content_with_markers(content, MARKER) == f"Look at {MARKER} and  this"
    assert content_with_markers(f"plain {MARKER} text", MARKER) == "plain  text"
    assert content_with_markers(None, MARKER) == ""


def test_a_conversation_has_images_only_with_image_url_parts() -> None:
    assert not has_images([{"role": "user", "content": "Hi"}])
    assert not has_images([{"role": "user", "content": [{"type": "text"}]}])
    assert has_images([{"role": "user", "content": [image_url("data:,")]}])


def test_an_image_that_is_not_one_names_which_image_it_is() -> None:
    png = "data:image/png;base64," + base64.b64encode(b"not a png").decode()
    conversation = [
        {"role": "user", "content": [image_url(png)]},
    ]
    with pytest.raises(ImageDecodingFailed, match="image 1 of 1: the 9 bytes"):
        decode_conversation_images(conversation, max_edge=64)
    remote = [{"role": "user", "content": [image_url("https://example.com/a.png")]}]
    with pytest.raises(ImageDecodingFailed, match="its URL is not a data: URL"):
        decode_conversation_images(remote, max_edge=64)
