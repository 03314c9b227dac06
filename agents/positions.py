"""What a slot's KV cache holds, one key per sequence position.  Plain data.

A text token's key is its id (an ``int``), so a text-only prompt is a list of
token ids as it always was.  A position taken by an image is an
``ImagePosition``: the image's identity (its bytes' digest and its scaled
size, ``agents.multimodal.DecodedImage.identity``) and which of its positions
it is.  Two prompts share a cache prefix exactly as far as their keys agree.

No llama.cpp here: the slots (``agents.slots``), the host tier and the engine
compare keys; ``agents.multimodal`` makes them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple


class ImagePosition(NamedTuple):
    """The key of one KV-cache position taken by an image."""

    identity: str
    # Which of the image's positions, from 0.
    offset: int


PositionKey = int | ImagePosition


def image_safe(keys: Sequence[PositionKey], keep: int) -> int:
    """``keep`` cut back to the start of the image it would end inside.

    An image's keys and values are made by one encode and one decode of all
    its positions (with non-causal attention between them in Gemma 3), so
    half an image cannot be kept and the rest evaluated.
    """
    while 0 < keep < len(keys):
        key = keys[keep]
        if not isinstance(key, ImagePosition) or key.offset == 0:
            break
        keep -= 1
    return keep


def reusable_prefix(
    cached: Sequence[PositionKey],
    wanted: Sequence[PositionKey],
    *,
    limit: int | None = None,
) -> int:
    """How many leading positions of ``wanted`` a cache holding ``cached`` keeps.

    The common prefix, at most ``limit`` (the engine keeps at least one
    position to evaluate, for fresh logits), cut back to the start of an image
    it would end inside (see ``image_safe``).
    """
    shared = 0
    for left, right in zip(cached, wanted, strict=False):
        if left != right:
            break
        shared += 1
    if limit is not None:
        shared = min(shared, max(limit, 0))
    return image_safe(wanted, shared)


def text_run(keys: Sequence[PositionKey], limit: int) -> int:
    """How many leading keys, at most ``limit``, are text tokens."""
    count = 0
    for key in keys:
        if count >= limit or not isinstance(key, int):
            break
        count += 1
    return count


def text_tokens(keys: Sequence[PositionKey]) -> list[int]:
    """The text tokens among ``keys``, in order (images left out)."""
    return [key for key in keys if isinstance(key, int)]


def text_only(keys: Sequence[PositionKey]) -> list[int] | None:
    """``keys`` as token ids when they hold no image; None when they do."""
    tokens = text_tokens(keys)
    return tokens if len(tokens) == len(keys) else None


def leading_text(keys: Sequence[PositionKey]) -> list[int]:
    """The token ids before the first image (all of them when there is none)."""
    return [key for key in keys[: text_run(keys, len(keys))] if isinstance(key, int)]
