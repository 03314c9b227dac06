"""The desired state of the fleet, kept as a history of revisions.

The newest revision is the desired state; every change adds one, so an
operator can see who changed what and when, and roll back to any revision.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import models

from inference.api_keys import digest_matches
from inference.desired_state import (
    DesiredState,
    InferenceParameters,
    ModelSource,
)


def no_model() -> str:
    return "None"


class DesiredStateRevisionQuerySet(models.QuerySet["DesiredStateRevision"]):
    def newest_first(self) -> DesiredStateRevisionQuerySet:
        return self.order_by("-created_at", "-id")


class DesiredStateRevision(models.Model):
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    # Serde form of the model source: "None", {"LocalToAgent": ...}, ...
    model = models.JSONField(default=no_model)
    multimodal_projection = models.JSONField(default=no_model)
    # None (no override) differs from an empty template.
    chat_template_override = models.TextField(null=True, blank=True)  # noqa: DJ001
    use_chat_template_override = models.BooleanField(default=False)
    default_system_prompt = models.TextField(blank=True, default="")
    inference_parameters = models.JSONField(default=dict)
    note = models.CharField(max_length=200, blank=True, default="")

    objects = DesiredStateRevisionQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"revision {self.pk} ({self.created_at:%Y-%m-%d %H:%M:%S})"

    def to_state(self) -> DesiredState:
        return DesiredState(
            model=ModelSource.from_json(self.model, "model"),
            multimodal_projection=ModelSource.from_json(
                self.multimodal_projection, "multimodal_projection"
            ),
            chat_template_override=self.chat_template_override,
            use_chat_template_override=self.use_chat_template_override,
            default_system_prompt=self.default_system_prompt,
            inference_parameters=InferenceParameters.from_json(
                self.inference_parameters
            ),
        )

    @classmethod
    def fields_from_state(cls, state: DesiredState) -> dict[str, Any]:
        return {
            "model": state.model.to_json(),
            "multimodal_projection": state.multimodal_projection.to_json(),
            "chat_template_override": state.chat_template_override,
            "use_chat_template_override": state.use_chat_template_override,
            "default_system_prompt": state.default_system_prompt,
            "inference_parameters": state.inference_parameters.to_json(),
        }


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
