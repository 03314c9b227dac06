"""Inference API keys: their format, hashing and the bearer header.

Framework-free.  A key reads ``pdl_<prefix>_<secret>``: the prefix (12 hex
characters) is stored in clear to find the key's row; the key itself is stored
only as a salted SHA-256 digest.  A fast hash is enough here, unlike for
passwords: the secret is 256 random bits, so there is nothing to brute-force,
and a slow hash would cost every inference request its time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

KEY_PREFIX = "pdl_"
_KEY_PATTERN = re.compile(r"^pdl_([0-9a-f]{12})_[A-Za-z0-9_-]{20,}$")


@dataclass(frozen=True)
class NewKey:
    """A freshly made key: ``plaintext`` is shown once and never stored."""

    plaintext: str
    prefix: str
    salt: str
    digest: str


def key_digest(plaintext: str, salt: str) -> str:
    return hashlib.sha256(f"{salt}:{plaintext}".encode()).hexdigest()


def generate_key() -> NewKey:
    prefix = secrets.token_hex(6)
    plaintext = f"{KEY_PREFIX}{prefix}_{secrets.token_urlsafe(32)}"
    salt = secrets.token_hex(16)
    return NewKey(plaintext, prefix, salt, key_digest(plaintext, salt))


def key_prefix(plaintext: str) -> str | None:
    """The lookup prefix of a key in our format, else None."""
    match = _KEY_PATTERN.match(plaintext)
    return match.group(1) if match else None


def digest_matches(plaintext: str, salt: str, digest: str) -> bool:
    return hmac.compare_digest(key_digest(plaintext, salt), digest)


def matches_any(token: str, keys: list[str]) -> bool:
    """Whether ``token`` is one of ``keys``, in time independent of which."""
    found = False
    for key in keys:
        # No early exit: the time taken does not tell how many keys differ.
        found |= hmac.compare_digest(token.encode(), key.encode())
    return found


def bearer_token(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()
