"""Serializers of the management API.

The desired state's rules live in one place, ``balancer.desired_state`` (the
agents apply them too): its serializer declares the fields, for the schema and
the browsable API, and hands validation to ``DesiredState.from_json``, whose
errors it turns into DRF's, by field.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from balancer.desired_state import (
    KV_CACHE_DTYPES,
    POOLING_TYPES,
    DesiredState,
    DesiredStateError,
)
from balancer.models import DesiredStateRevision, Pool
from balancer.pools import DEFAULT_POOL
from balancer.services import desired_state_completed, pool_agent_names

REVISIONS_DEFAULT_LIMIT = 50
REVISIONS_MAX_LIMIT = 1000


# Paddler's model source: a unit variant as a bare string, the others tagged.
MODEL_SOURCE_SCHEMA: dict[str, Any] = {
    "oneOf": [
        {"type": "string", "enum": ["None"]},
        {
            "type": "object",
            "properties": {"LocalToAgent": {"type": "string"}},
            "required": ["LocalToAgent"],
            "additionalProperties": False,
        },
        {
            "type": "object",
            "properties": {
                "HuggingFace": {
                    "type": "object",
                    "properties": {
                        "repo_id": {"type": "string"},
                        "filename": {"type": "string"},
                        "revision": {"type": "string"},
                    },
                    "required": ["repo_id", "filename", "revision"],
                }
            },
            "required": ["HuggingFace"],
            "additionalProperties": False,
        },
        {
            "type": "object",
            "properties": {
                "Url": {
                    "type": "object",
                    "properties": {"url": {"type": "string", "format": "uri"}},
                    "required": ["url"],
                }
            },
            "required": ["Url"],
            "additionalProperties": False,
        },
    ]
}


@extend_schema_field(MODEL_SOURCE_SCHEMA)
class ModelSourceField(serializers.JSONField):
    pass


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

    model = ModelSourceField()
    multimodal_projection = ModelSourceField()
    chat_template_override = ChatTemplateSerializer(allow_null=True)
    use_chat_template_override = serializers.BooleanField()
    default_system_prompt = serializers.CharField(
        required=False, allow_blank=True, trim_whitespace=False
    )
    inference_parameters = InferenceParametersSerializer()

    def to_internal_value(self, data: Any) -> DesiredState:
        pool = self.context.get("pool", DEFAULT_POOL)
        try:
            return DesiredState.from_json(desired_state_completed(data=data, pool=pool))
        except DesiredStateError as error:
            raise serializers.ValidationError({error.field: [error.message]}) from None

    def to_representation(self, instance: DesiredState) -> dict[str, Any]:
        return instance.to_json()


class PoolQuerySerializer(serializers.Serializer[Any]):
    """``?pool=NAME``: the model pool an endpoint is about (ours; without it,
    the default pool, as Paddler's clients expect)."""

    pool = serializers.CharField(
        default=DEFAULT_POOL, help_text="A model pool's name; default 'default'."
    )


class PoolSerializer(serializers.ModelSerializer[Pool]):
    agents = serializers.SerializerMethodField(
        help_text="Names of the agents serving it now."
    )

    class Meta:
        model = Pool
        fields = ["name", "aliases", "created_at", "agents"]

    def get_agents(self, pool: Pool) -> list[str]:
        return pool_agent_names(pool.name)


class PoolCreateSerializer(serializers.Serializer[Any]):
    name = serializers.CharField(help_text="Lowercase letters, digits, - and _.")
    aliases = serializers.ListField(
        child=serializers.CharField(), required=False, default=list
    )
    desired_state = DesiredStateSerializer(
        required=False, help_text="Its first desired state."
    )


class PoolAliasesSerializer(serializers.Serializer[Any]):
    aliases = serializers.ListField(child=serializers.CharField())


class DesiredStateQuerySerializer(PoolQuerySerializer):
    extensions = serializers.BooleanField(
        default=False,
        help_text="Add our fields (default_system_prompt) to Paddler's.",
    )


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


class RevisionQuerySerializer(PoolQuerySerializer):
    limit = serializers.IntegerField(
        min_value=1, max_value=REVISIONS_MAX_LIMIT, default=REVISIONS_DEFAULT_LIMIT
    )


STATE_APPLICATION_STATUSES = (
    "Fresh",
    "Applied",
    "AttemptedAndRetrying",
    "AttemptedAndNotAppliable",
    "Stuck",
)


class AgentSerializer(serializers.Serializer[Any]):
    id = serializers.CharField()
    name = serializers.CharField(allow_null=True)
    slots_total = serializers.IntegerField()
    slots_processing = serializers.IntegerField()
    desired_slots_total = serializers.IntegerField()
    model_path = serializers.CharField(allow_null=True)
    download_current = serializers.IntegerField()
    download_total = serializers.IntegerField()
    download_filename = serializers.CharField(allow_null=True)
    download_indeterminate = serializers.BooleanField()
    issues = serializers.ListField(
        child=serializers.JSONField(),
        help_text='Paddler\'s agent issues, e.g. {"ModelFileDoesNotExist": '
        '{"model_path": "/x.gguf"}}',
    )
    state_application_status = serializers.ChoiceField(STATE_APPLICATION_STATUSES)
    uses_chat_template_override = serializers.BooleanField()


class AgentsSnapshotSerializer(serializers.Serializer[Any]):
    agents = AgentSerializer(many=True)


class BufferedRequestsSerializer(serializers.Serializer[Any]):
    buffered_requests_current = serializers.IntegerField()


class RevisionListSerializer(serializers.Serializer[Any]):
    revisions = RevisionSerializer(many=True)


class AgentDesiredStateSerializer(serializers.Serializer[Any]):
    """What agents apply (Paddler's ``AgentDesiredState``): the override is
    null unless the desired state says to use it."""

    chat_template_override = ChatTemplateSerializer(allow_null=True)
    inference_parameters = InferenceParametersSerializer()
    model = ModelSourceField()
    multimodal_projection = ModelSourceField()


class ModelMetadataSerializer(serializers.Serializer[Any]):
    metadata = serializers.DictField(
        child=serializers.CharField(), help_text="The model's GGUF metadata."
    )


class RequestRecordSerializer(serializers.Serializer[Any]):
    id = serializers.CharField()
    parent_id = serializers.CharField(allow_null=True)
    kind = serializers.CharField()
    agent_id = serializers.CharField()
    agent = serializers.CharField()
    slot = serializers.IntegerField(allow_null=True)
    matched_prefix_blocks = serializers.IntegerField()
    why = serializers.CharField()
    retried = serializers.BooleanField()
    prompt_tokens = serializers.IntegerField()
    cached_prompt_tokens = serializers.IntegerField()
    generated_tokens = serializers.IntegerField()
    queue_wait_ms = serializers.FloatField()
    time_to_first_token_ms = serializers.FloatField(allow_null=True)
    tokens_per_second = serializers.FloatField(allow_null=True)
    duration_ms = serializers.FloatField()
    outcome = serializers.CharField()
    finished_at = serializers.FloatField(help_text="Unix time.")


class RequestLogPageSerializer(serializers.Serializer[Any]):
    next = serializers.URLField(allow_null=True)
    results = RequestRecordSerializer(many=True)


class ErrorSerializer(serializers.Serializer[Any]):
    """The body of every error (``balancer.api.exceptions``)."""

    def get_fields(self) -> dict[str, serializers.Field[Any, Any, Any, Any]]:
        # Declared here: a field named "errors" would hide Serializer.errors.
        return {
            "error": serializers.CharField(),
            "field": serializers.CharField(required=False, allow_null=True),
            "errors": serializers.DictField(
                required=False, help_text="DRF's messages, by field."
            ),
        }
