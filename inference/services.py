"""Inference API keys: making, revoking, and deciding who may call the APIs."""

from __future__ import annotations

from django.conf import settings
from django.utils import timezone

from inference.api_keys import generate_key, key_prefix, matches_any
from inference.models import InferenceApiKey


def inference_api_key_create(*, name: str) -> tuple[InferenceApiKey, str]:
    """Store a new key; returns it with its plaintext, which is not kept."""
    new = generate_key()
    key = InferenceApiKey.objects.create(
        name=name, prefix=new.prefix, salt=new.salt, digest=new.digest
    )
    return key, new.plaintext


def inference_api_key_revoke(*, prefix: str) -> InferenceApiKey:
    """Revoke the key with ``prefix`` (or given whole); ``DoesNotExist`` if none.

    Takes effect on the next request: every request looks its key up.
    """
    prefix = key_prefix(prefix) or prefix
    key = InferenceApiKey.objects.get(prefix=prefix)
    if key.revoked_at is None:
        key.revoked_at = timezone.now()
        key.save(update_fields=["revoked_at"])
    return key


async def inference_access_allowed(*, token: str | None) -> bool:
    """Whether a caller presenting ``token`` (or none) may use inference.

    With no key configured (neither ``PADDLER_INFERENCE_API_KEYS`` nor an
    active key in the database) the APIs are open, whatever token is sent:
    OpenAI clients always send one.
    """
    configured: list[str] = settings.PADDLER_INFERENCE_API_KEYS
    if token is not None:
        if configured and matches_any(token, configured):
            return True
        prefix = key_prefix(token)
        if prefix is not None:
            key = await InferenceApiKey.objects.filter(prefix=prefix).afirst()
            if key is not None and key.matches(token):
                return True
    if configured:
        return False
    return not await InferenceApiKey.objects.active().aexists()
