"""A conversation's prompt with images, made on the preparer's thread.

The web tier hands every image to the agent as an ``image_url`` part whose
URL is a base64 ``data:`` URL (``balancer.images``).  Here:

1. ``decode_conversation_images``: each image's bytes decoded and scaled to
   the desired state's ``image_resize_to_fit`` (``ImageDecodingFailed`` for
   bytes that are no image, naming which image).
2. ``content_with_markers``: each message's content as the text a chat
   template renders, every image part written as libmtmd's marker
   (``<__media__>``).  A client's text that holds the marker has it removed
   (stripped, not escaped): otherwise it would claim an image that is not
   there, or shift every image after it by one.
3. ``image_prompt``: the rendered prompt, cut into (text, from_a_message)
   segments as for any conversation, split at the markers.  Text runs are
   tokenized as text prompts are (a message's text with special-token parsing
   off, so ``<end_of_turn>`` typed by a user stays text); each image is
   tokenized by libmtmd alone, which wraps it in the model's own delimiters
   (``<start_of_image>``/``<end_of_image>`` for Gemma 3).

The result is one key per position (``agents.positions``): token ids for
text, ``ImagePosition``s for an image, with the image chunks the engine
evaluates by the position they start at.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from agents.multimodal import (
    DecodedImage,
    ImageCountMismatch,
    ImageDecodingFailed,
    MultimodalError,
    MultimodalPrompt,
    Projection,
    decode_image,
)
from agents.positions import ImagePosition, PositionKey
from balancer.contract import Message
from balancer.images import DataUrlError, image_urls, parse_data_url


class PromptEndsWithImage(MultimodalError):
    """A prompt whose last position is an image: no text to read logits from."""


class Tokenizer(Protocol):
    def tokenize(
        self, text: str, *, add_special: bool, parse_special: bool = True
    ) -> list[int]: ...

    def tokenize_segments(self, segments: list[tuple[str, bool]]) -> list[int]: ...


@dataclass
class ImageSpan:
    """One image of a prompt: where it starts, and the libmtmd chunk for it."""

    start: int
    n_pos: int
    n_tokens: int
    # The image's own tokenization (its marker alone), which owns the chunk.
    prompt: MultimodalPrompt
    index: int

    def evaluate(self, context: Any, *, seq_id: int, n_batch: int) -> None:
        """Encode the image and decode it into ``seq_id`` at ``start``."""
        self.prompt.evaluate_image(
            context,
            self.index,
            seq_id=seq_id,
            position=self.start,
            n_batch=n_batch,
        )


@dataclass
class ImagePrompt:
    """A prompt with images: its position keys, and its images by start."""

    keys: list[PositionKey]
    spans: dict[int, ImageSpan] = field(default_factory=dict)
    text_tokens: int = 0
    image_tokens: int = 0

    @property
    def n_pos(self) -> int:
        return len(self.keys)

    def close(self) -> None:
        for span in self.spans.values():
            span.prompt.close()


def has_images(conversation: Sequence[Message]) -> bool:
    return any(image_urls(message.get("content")) for message in conversation)


def decode_conversation_images(
    conversation: Sequence[Message], *, max_edge: int
) -> list[DecodedImage]:
    """The images of a conversation's ``image_url`` parts, in order, decoded
    and scaled so that neither side exceeds ``max_edge``."""
    urls = [
        url for message in conversation for url in image_urls(message.get("content"))
    ]
    images: list[DecodedImage] = []
    for number, url in enumerate(urls, start=1):
        where = f"image {number} of {len(urls)}"
        try:
            _, data = parse_data_url(url)
        except DataUrlError as error:
            raise ImageDecodingFailed(f"{where}: its URL {error}") from None
        try:
            images.append(decode_image(data, max_edge=max_edge))
        except ImageDecodingFailed as error:
            raise ImageDecodingFailed(f"{where}: {error}") from None
    return images


def content_with_markers(content: Any, marker: str) -> str:
    """A message's content as text, each image part as ``marker``.

    Text parts are joined as ``balancer.chat_template.message_text`` joins
    them; the marker is removed from the client's text (repeatedly, so that
    removing one cannot join two halves into another).
    """
    if isinstance(content, str):
        return _without(content, marker)
    if not isinstance(content, list):
        return ""
    pieces: list[str] = []
    for part in content:
        if not isinstance(part, dict):
            continue
        if part.get("type") == "text":
            pieces.append(_without(str(part.get("text", "")), marker))
        elif part.get("type") == "image_url":
            pieces.append(marker)
    return "".join(pieces)


def _without(text: str, marker: str) -> str:
    while marker in text:
        text = text.replace(marker, "")
    return text


def image_prompt(
    segments: list[tuple[str, bool]],
    images: Sequence[DecodedImage],
    *,
    projection: Projection,
    tokenizer: Tokenizer,
) -> ImagePrompt:
    """The prompt of rendered ``segments`` whose markers stand for ``images``.

    The caller owns the result (``close`` frees the image chunks).  A
    template that does not render every image (one that drops a message)
    raises ``ImageCountMismatch``: an image is never dropped silently.
    """
    marker = projection.marker
    # Text runs around the markers: run i comes before image i.
    runs: list[list[tuple[str, bool]]] = [[]]
    for text, literal in segments:
        for index, part in enumerate(text.split(marker)):
            if index > 0:
                runs.append([])
            if part:
                runs[-1].append((part, literal))
    if len(runs) - 1 != len(images):
        raise ImageCountMismatch(
            f"the chat template rendered {len(runs) - 1} image(s) of the "
            f"conversation's {len(images)}: a template that leaves a message "
            "out cannot be used with images in it"
        )
    prompt = ImagePrompt(keys=[])
    try:
        for index, run in enumerate(runs):
            if index == 0:
                # The BOS token, if the model wants one, comes first.
                tokens = tokenizer.tokenize_segments(run or [("", False)])
            else:
                tokens = [
                    token
                    for text, literal in run
                    for token in tokenizer.tokenize(
                        text, add_special=False, parse_special=not literal
                    )
                ]
            prompt.keys.extend(tokens)
            prompt.text_tokens += len(tokens)
            if index < len(images):
                _add_image(prompt, projection.tokenize(marker, [images[index]]))
    except BaseException:
        prompt.close()
        raise
    if prompt.keys and isinstance(prompt.keys[-1], ImagePosition):
        prompt.close()
        raise PromptEndsWithImage(
            "the prompt ends with an image; the model needs text after it "
            "(the chat template's turn end, or a generation prompt)"
        )
    return prompt


def _add_image(prompt: ImagePrompt, tokenized: MultimodalPrompt) -> None:
    """Append one image's chunks (its delimiters and itself) to ``prompt``."""
    owned = False
    try:
        for index, chunk in enumerate(tokenized.chunks):
            if chunk.kind == "text":
                prompt.keys.extend(chunk.tokens)
                prompt.text_tokens += len(chunk.tokens)
                continue
            start = len(prompt.keys)
            identity = chunk.image.identity if chunk.image else "unknown"
            prompt.keys.extend(
                ImagePosition(identity, offset) for offset in range(chunk.n_pos)
            )
            prompt.image_tokens += chunk.n_tokens
            prompt.spans[start] = ImageSpan(
                start, chunk.n_pos, chunk.n_tokens, tokenized, index
            )
            owned = True
    finally:
        if not owned:
            tokenized.close()
