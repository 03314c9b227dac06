"""Inference API keys: bearer keys of the inference and OpenAI APIs."""

from __future__ import annotations

from django.db import models

from inference.api_keys import digest_matches


def no_model() -> str:
    """Default of the JSON columns of migration 0001, which imports it.

    (The desired-state revisions themselves now live in ``balancer.models``.)
    """
    return "None"


class InferenceApiKeyQuerySet(models.QuerySet["InferenceApiKey"]):
    def active(self) -> InferenceApiKeyQuerySet:
        return self.filter(revoked_at__isnull=True)


class InferenceApiKey(models.Model):
    """A bearer key of the inference and OpenAI APIs, stored hashed.

    Made by ``services.inference_api_key_create``, which shows the plaintext
    once; revoking keeps the row, so an operator can see which key it was.
    """

    name = models.CharField(max_length=100)
    # The clear part of the key, unique, to find the row without the secret.
    prefix = models.CharField(max_length=32, unique=True)
    salt = models.CharField(max_length=64)
    digest = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = InferenceApiKeyQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name = "inference API key"

    def __str__(self) -> str:
        return f"{self.name} (pdl_{self.prefix}_…)"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None

    def matches(self, plaintext: str) -> bool:
        return self.is_active and digest_matches(plaintext, self.salt, self.digest)
