"""Serializers of the management API.

The desired state's rules live in one place, ``balancer.desired_state`` (the
agents apply them too): its serializer declares the fields, for the schema and
the browsable API, and hands validation to ``DesiredState.from_json``, whose
errors it turns into DRF's, by field.
"""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from balancer.desired_state import (
    KV_CACHE_DTYPES,
    POOLING_TYPES,
    DesiredState,
    DesiredStateError,
)
from balancer.models import DesiredStateRevision
from balancer.services import desired_state_completed

REVISIONS_DEFAULT_LIMIT = 50
REVISIONS_MAX_LIMIT = 1000


class InferenceParametersSerializer(serializers.Serializer[Any]):
    n_batch = serializers.IntegerField(default=2048)
    context_size = serializers.IntegerField(default=8192)
    embedding_batch_size = serializers.IntegerField(default=256)
    enable_embeddings = serializers.BooleanField(default=False)
    image_resize_to_fit = serializers.IntegerField(default=1024)
    k_cache_dtype = serializers.ChoiceField(KV_CACHE_DTYPES, default="Q8_0")
    v_cache_dtype = serializers.ChoiceField(KV_CACHE_DTYPES, default="Q8_0")
    min_p = serializers.FloatField(default=0.05)
    n_gpu_layers = serializers.IntegerField(default=0)
    penalty_frequency = serializers.FloatField(default=0.0)
    penalty_last_n = serializers.IntegerField(default=-1)
    penalty_presence = serializers.FloatField(default=0.8)
    penalty_repeat = serializers.FloatField(default=1.1)
    pooling_type = serializers.ChoiceField(POOLING_TYPES, default="Last")
    temperature = serializers.FloatField(default=0.8)
    top_k = serializers.IntegerField(default=80)
    top_p = serializers.FloatField(default=0.8)


class ChatTemplateSerializer(serializers.Serializer[Any]):
    content = serializers.CharField(trim_whitespace=False, allow_blank=True)


class DesiredStateSerializer(serializers.Serializer[DesiredState]):
    """Paddler's desired state, plus our ``default_system_prompt``.

    A body without ``default_system_prompt`` keeps the current one: Paddler's
    clients do not know it and leave it out of what they put back.
    """

    model = serializers.JSONField(
        help_text='"None", {"LocalToAgent": path}, {"HuggingFace": {"repo_id", '
        '"filename", "revision"}} or {"Url": {"url"}}'
    )
    multimodal_projection = serializers.JSONField(help_text="As model.")
    chat_template_override = ChatTemplateSerializer(allow_null=True)
    use_chat_template_override = serializers.BooleanField()
    default_system_prompt = serializers.CharField(
        required=False, allow_blank=True, trim_whitespace=False
    )
    inference_parameters = InferenceParametersSerializer()

    def to_internal_value(self, data: Any) -> DesiredState:
        try:
            return DesiredState.from_json(desired_state_completed(data=data))
        except DesiredStateError as error:
            raise serializers.ValidationError({error.field: [error.message]}) from None

    def to_representation(self, instance: DesiredState) -> dict[str, Any]:
        return instance.to_json()


class RevisionSerializer(serializers.ModelSerializer[DesiredStateRevision]):
    created_by: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(
        slug_field="username", read_only=True, allow_null=True
    )
    state = serializers.SerializerMethodField()

    class Meta:
        model = DesiredStateRevision
        fields = ["id", "created_at", "created_by", "note", "state"]

    def get_state(self, revision: DesiredStateRevision) -> dict[str, Any]:
        return revision.to_state().to_json()


class RevisionQuerySerializer(serializers.Serializer[Any]):
    limit = serializers.IntegerField(
        min_value=1, max_value=REVISIONS_MAX_LIMIT, default=REVISIONS_DEFAULT_LIMIT
    )
