"""The images of a conversation, made ready for the agents.

Every API's conversation goes through ``prepare_images`` after its shape is
checked and before it is dispatched.  What reaches an agent is always an
``image_url`` part with a base64 ``data:`` URL of an image (the contract
between the tiers), so here:

- a ``data:`` URL is decoded (``balancer.images.parse_data_url``): a 400
  naming the part when it is not a base64 image, a 413 over
  ``PADDLER_MAX_IMAGE_BYTES``;
- an http(s) URL is fetched (``image_fetch``) and replaced by the data URL of
  what came back;
- the images of one request together must stay within
  ``PADDLER_MAX_REQUEST_IMAGE_BYTES`` (413), and number at most
  ``MAX_IMAGES_PER_REQUEST``;
- each image's fingerprint is noted (``balancer.images.remember_digest``), so
  that routing does not decode the image again.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from django.conf import settings

from balancer.contract import Message, RequestParams
from balancer.images import (
    DataUrlError,
    data_url,
    image_digest,
    parse_data_url,
    remember_digest,
)
from inference.image_fetch import FetchRules, ImageFetchFailed, fetch_images
from inference.validation import ImageTooLarge, InvalidRequest

# More images than any vision model's context holds (each takes 64 to 1,000
# positions); a bound on the work one request can ask of the fetcher.
MAX_IMAGES_PER_REQUEST = 64


@dataclass(frozen=True)
class ImageLimits:
    max_image_bytes: int = 20 << 20
    max_request_bytes: int = 32 << 20
    fetch: FetchRules = field(default_factory=FetchRules)

    @classmethod
    def from_settings(cls) -> ImageLimits:
        return cls(
            max_image_bytes=settings.PADDLER_MAX_IMAGE_BYTES,
            max_request_bytes=settings.PADDLER_MAX_REQUEST_IMAGE_BYTES,
            fetch=FetchRules.from_settings(),
        )


async def prepare_images(
    history: list[Message], *, field: str, limits: ImageLimits | None = None
) -> int:
    """Check, fetch and fingerprint the images of ``history`` in place (see
    the module's docstring); returns how many there are.

    ``field`` names the history in errors (``conversation_history`` or
    ``messages``).  Raises ``InvalidRequest`` (400) or ``ImageTooLarge``
    (413), each naming the part's URL, e.g.
    ``conversation_history[1].content[2].image_url.url``.
    """
    limits = limits or ImageLimits.from_settings()
    # (where, the part's image_url object) of each image, in order.
    images: list[tuple[str, dict[str, str]]] = []
    for index, message in enumerate(history):
        content = message.get("content")
        if not isinstance(content, list):
            continue
        for part_index, part in enumerate(content):
            if isinstance(part, dict) and part.get("type") == "image_url":
                where = f"{field}[{index}].content[{part_index}].image_url.url"
                images.append((where, part["image_url"]))
    if len(images) > MAX_IMAGES_PER_REQUEST:
        raise InvalidRequest(
            field, f"holds {len(images)} images; at most {MAX_IMAGES_PER_REQUEST}"
        )
    total = 0
    to_fetch: list[tuple[str, dict[str, str]]] = []
    for where, image in images:
        url = image["url"]
        if url.startswith("data:"):
            data = await _decoded(where, url)
            _check_size(where, len(data), limits)
            total += len(data)
        elif url.lower().startswith(("http://", "https://")):
            to_fetch.append((where, image))
        else:
            raise InvalidRequest(
                where,
                "must be a data: URL (data:image/png;base64,...) or an http(s) URL",
            )
    if total > limits.max_request_bytes:
        raise _request_too_large(field, limits)
    if to_fetch:
        fetched = await fetch_images(
            [image["url"] for _, image in to_fetch], limits.fetch
        )
        for (where, image), result in zip(to_fetch, fetched, strict=True):
            if isinstance(result, ImageFetchFailed):
                if result.status == 413:
                    raise ImageTooLarge(where, result.message)
                raise InvalidRequest(where, result.message)
            media_type, data = result
            _check_size(where, len(data), limits)
            total += len(data)
            if total > limits.max_request_bytes:
                raise _request_too_large(field, limits)
            image["url"] = data_url(media_type, data)
            remember_digest(image["url"], image_digest(data))
    return len(images)


# Above this, decoding and hashing (about 5 ms a megabyte) leave the event
# loop, where other requests' tokens are waiting.
_DECODE_INLINE_CHARS = 256 << 10


async def _decoded(where: str, url: str) -> bytes:
    """The bytes of a data URL's image, its fingerprint noted."""

    def decode() -> bytes:
        _, data = parse_data_url(url)
        remember_digest(url, image_digest(data))
        return data

    try:
        if len(url) <= _DECODE_INLINE_CHARS:
            return decode()
        return await asyncio.to_thread(decode)
    except DataUrlError as error:
        raise InvalidRequest(where, str(error)) from None


def _check_size(where: str, size: int, limits: ImageLimits) -> None:
    if size > limits.max_image_bytes:
        raise ImageTooLarge(
            where,
            f"is an image of {size} bytes, larger than PADDLER_MAX_IMAGE_BYTES "
            f"({limits.max_image_bytes} bytes)",
        )


def _request_too_large(field: str, limits: ImageLimits) -> ImageTooLarge:
    return ImageTooLarge(
        field,
        "holds images larger together than PADDLER_MAX_REQUEST_IMAGE_BYTES "
        f"({limits.max_request_bytes} bytes)",
    )


async def prepare_params_images(params: RequestParams, *, field: str) -> int:
    """``prepare_images`` for a generation's params: a conversation's history;
    a raw prompt or an embedding batch carries none."""
    if "conversation_history" not in params:
        return 0
    return await prepare_images(params["conversation_history"], field=field)
