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

import hashlib

# 128 bits: a slot trusts a matching fingerprint to reuse the keys and values
# of an image without looking at it again, so a collision must be out of reach.
DIGEST_SIZE = 16


def image_digest(data: bytes) -> str:
    """The fingerprint of an image's bytes: 32 lowercase hex characters."""
    return hashlib.blake2b(
        data, digest_size=DIGEST_SIZE, person=b"paddler-image"
    ).hexdigest()
