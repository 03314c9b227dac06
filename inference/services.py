"""Inference API keys: making and revoking them (``access`` checks them)."""

from __future__ import annotations

from django.utils import timezone

from inference.access import forget_keys
from inference.api_keys import generate_key, key_prefix
from inference.models import InferenceApiKey


def inference_api_key_create(*, name: str) -> tuple[InferenceApiKey, str]:
    """Store a new key; returns it with its plaintext, which is not kept."""
    new = generate_key()
    key = InferenceApiKey.objects.create(
        name=name, prefix=new.prefix, salt=new.salt, digest=new.digest
    )
    forget_keys()
    return key, new.plaintext


def inference_api_key_revoke(*, prefix: str) -> InferenceApiKey:
    """Revoke the key with ``prefix`` (or given whole); ``DoesNotExist`` if none.

    Takes effect on this process's next request, and on other processes'
    within ``access.KEYS_CACHE_S``.
    """
    prefix = key_prefix(prefix) or prefix
    key = InferenceApiKey.objects.get(prefix=prefix)
    if key.revoked_at is None:
        key.revoked_at = timezone.now()
        key.save(update_fields=["revoked_at"])
    forget_keys()
    return key
