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
import threading
from collections import OrderedDict
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


def has_images(messages: list[Any]) -> bool:
    """Whether any message of a conversation holds an ``image_url`` part."""
    return any(
        image_urls(message.get("content"))
        for message in messages
        if isinstance(message, dict)
    )


# Fingerprints of data URLs already decoded in this process, by the URL's
# Python hash and length.  A conversation is fingerprinted more than once per
# request (validation, routing, the request's log; on the agent, its prompt
# and the chain its slot reports) and its images come back in every later
# turn: decoding 10 MB of base64 each time costs more than the routing it
# serves.  The key keeps no reference to the URL, so the cache holds no image.
# A str caches its own hash, so the same string object is hashed once.  Two
# URLs that share hash and length (64-bit SipHash with a per-process key: out
# of an attacker's reach) would share a fingerprint, which is a routing hint
# only: the agent reuses a cached image by its own decoded identity.
_DIGESTS: OrderedDict[tuple[int, int], str] = OrderedDict()
_DIGESTS_KEPT = 1024
# The agent fingerprints in its preparer threads and its loop alike.
_DIGESTS_LOCK = threading.Lock()


def remember_digest(url: str, digest: str) -> None:
    """Note the fingerprint of the image a data URL carries (its caller has
    just decoded it), so that ``url_digest`` need not decode it again."""
    key = (hash(url), len(url))
    with _DIGESTS_LOCK:
        _DIGESTS[key] = digest
        _DIGESTS.move_to_end(key)
        while len(_DIGESTS) > _DIGESTS_KEPT:
            _DIGESTS.popitem(last=False)


def url_digest(url: str) -> str:
    """The fingerprint of the image an ``image_url`` part names.

    A data URL's image is its decoded payload's ``image_digest`` (cached, see
    above); a URL that is not a valid data URL (an http(s) URL the web tier
    has not fetched yet, or a malformed one about to be refused) is known by
    its text, so that two such parts still differ.
    """
    with _DIGESTS_LOCK:
        known = _DIGESTS.get((hash(url), len(url)))
    if known is not None:
        return known
    try:
        _, data = parse_data_url(url)
    except DataUrlError:
        text = url.encode(errors="surrogatepass")
        return "url:" + hashlib.blake2b(text, digest_size=DIGEST_SIZE).hexdigest()
    digest = image_digest(data)
    remember_digest(url, digest)
    return digest
