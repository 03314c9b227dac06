"""The fingerprint of an image, the same on both tiers.  Framework-free.

An image in a prompt is known by a hash of its bytes as the client sent them
once decoded from their transport (the payload of a ``data:`` URL, the body
fetched from an ``http(s)`` URL), not of its pixels: the web tier can then
fingerprint a conversation for routing without decoding a single image, and
the agent, which decodes it, names the image in its slots' caches with the
same string.  The same picture encoded twice (a PNG and a JPEG of it) counts
as two images: a missed cache hit, never a wrong one.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from typing import Any

# 128 bits: a slot trusts a matching fingerprint to reuse the keys and values
# of an image without looking at it again, so a collision must be out of reach.
DIGEST_SIZE = 16


def image_digest(data: bytes) -> str:
    """The fingerprint of an image's bytes: 32 lowercase hex characters."""
    return hashlib.blake2b(
        data, digest_size=DIGEST_SIZE, person=b"paddler-image"
    ).hexdigest()


# What an image part's data URL may declare.  Each is a format the agent's
# decoder accepts; the declared type is a label, the agent trusts the bytes.
IMAGE_MEDIA_TYPES = frozenset(
    {"image/png", "image/jpeg", "image/jpg", "image/webp", "image/gif", "image/bmp"}
)


class DataUrlError(ValueError):
    """A ``data:`` URL that does not carry an image; the message says why."""


def parse_data_url(url: str) -> tuple[str, bytes]:
    """The media type and bytes of a base64 ``data:`` URL of an image.

    ``data:image/png;base64,iVBOR...``: the media type must be an image type
    we decode, the encoding base64, the payload valid and not empty.
    """
    if not url.startswith("data:"):
        raise DataUrlError("is not a data: URL")
    header, comma, payload = url[len("data:") :].partition(",")
    if not comma:
        raise DataUrlError("has no ',' between its header and its data")
    fields = [field.strip().lower() for field in header.split(";")]
    media_type = fields[0]
    if media_type not in IMAGE_MEDIA_TYPES:
        shown = media_type[:40] or "none"
        raise DataUrlError(
            f"declares media type {shown!r}; images must be one of "
            + ", ".join(sorted(IMAGE_MEDIA_TYPES))
        )
    if "base64" not in fields[1:]:
        raise DataUrlError("must be base64-encoded (data:image/...;base64,...)")
    try:
        data = base64.b64decode(payload.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise DataUrlError("has a payload that is not valid base64") from None
    if not data:
        raise DataUrlError("has an empty payload")
    return media_type, data


def data_url(media_type: str, data: bytes) -> str:
    """A base64 ``data:`` URL of ``data``."""
    return f"data:{media_type};base64,{base64.b64encode(data).decode('ascii')}"


def image_urls(content: Any) -> list[str]:
    """The URLs of a message content's ``image_url`` parts, in order.

    Content is a string (no images) or a list of typed parts; an image part
    is ``{"type": "image_url", "image_url": {"url": ...}}`` (OpenAI's and
    Paddler's shape).
    """
    if not isinstance(content, list):
        return []
    urls: list[str] = []
    for part in content:
        if isinstance(part, dict) and part.get("type") == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else None
            if isinstance(url, str):
                urls.append(url)
    return urls
