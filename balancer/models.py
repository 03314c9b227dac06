"""The desired state of the fleet, kept as a history of revisions.

The newest revision is the desired state; every change adds one, so an
operator can see who changed what and when, and roll back to any revision.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from django.conf import settings
from django.core.exceptions import NON_FIELD_ERRORS, ValidationError
from django.db import models
from django.db.models import Q

from balancer.desired_state import (
    KV_CACHE_DTYPES,
    POOLING_TYPES,
    DesiredState,
    DesiredStateError,
    InferenceParameters,
    ModelSource,
)
from balancer.pools import DEFAULT_POOL

# The fields of ``ModelSource`` other than its kind; a revision has one column
# per field for each of its two model sources, named ``<source>_<field>``.
MODEL_SOURCE_FIELDS = ("local_path", "repo_id", "filename", "revision", "url")
MODEL_SOURCES = ("model", "multimodal_projection")

# The table and its constraints keep the names they had when the model lived in
# the ``inference`` app (migration ``balancer.0001`` moved it without touching
# the database), so existing databases upgrade in place.
_TABLE = "inference_desiredstaterevision"
_CONSTRAINT_PREFIX = f"{_TABLE}_"
INFERENCE_PARAMETERS = tuple(f.name for f in dataclasses.fields(InferenceParameters))


class ModelSourceKind(models.TextChoices):
    # The values are Paddler's serde variant names, as on the wire.
    NONE = "None", "none"
    LOCAL_TO_AGENT = "LocalToAgent", "local to agent"
    HUGGING_FACE = "HuggingFace", "Hugging Face"
    URL = "Url", "URL"


KV_CACHE_DTYPE_CHOICES = [(dtype, dtype) for dtype in KV_CACHE_DTYPES]
POOLING_TYPE_CHOICES = [(pooling, pooling) for pooling in POOLING_TYPES]


def _model_source_constraints(source: str) -> list[models.BaseConstraint]:
    """Each kind fills exactly the columns it uses, as ``ModelSource`` does."""

    def kind(value: str) -> Q:
        return Q(**{f"{source}_kind": value})

    def only(*filled: str) -> Q:
        condition = Q()
        for name in MODEL_SOURCE_FIELDS:
            column = f"{source}_{name}"
            condition &= ~Q(**{column: ""}) if name in filled else Q(**{column: ""})
        return condition

    return [
        models.CheckConstraint(
            name=f"{_CONSTRAINT_PREFIX}{source}_source",
            condition=(
                (kind(ModelSourceKind.NONE) & only())
                | (
                    kind(ModelSourceKind.LOCAL_TO_AGENT)
                    & Q(**{f"{source}_local_path__startswith": "/"})
                    & only("local_path")
                )
                | (
                    kind(ModelSourceKind.HUGGING_FACE)
                    & only("repo_id", "filename", "revision")
                )
                | (kind(ModelSourceKind.URL) & only("url"))
            ),
        )
    ]


def _inference_parameter_constraints() -> list[models.BaseConstraint]:
    """The ranges ``InferenceParameters.validate`` enforces, kept by the database
    too, so that no path around the API (a shell, a bad migration) stores a
    revision that agents would refuse."""
    at_least_one = ("n_batch", "context_size", "embedding_batch_size")
    constraints: list[models.BaseConstraint] = [
        models.CheckConstraint(
            name=f"{_CONSTRAINT_PREFIX}{name}_positive",
            condition=Q(**{f"{name}__gte": 1}),
        )
        for name in (*at_least_one, "image_resize_to_fit")
    ]
    constraints += [
        models.CheckConstraint(
            name=f"{_CONSTRAINT_PREFIX}{name}_probability",
            condition=Q(**{f"{name}__gte": 0.0, f"{name}__lte": 1.0}),
        )
        for name in ("top_p", "min_p")
    ]
    constraints += [
        models.CheckConstraint(
            name=f"{_CONSTRAINT_PREFIX}{name}_known",
            condition=Q(**{f"{name}__in": KV_CACHE_DTYPES}),
        )
        for name in ("k_cache_dtype", "v_cache_dtype")
    ]
    constraints.append(
        models.CheckConstraint(
            name=f"{_CONSTRAINT_PREFIX}pooling_type_known",
            condition=Q(pooling_type__in=POOLING_TYPES),
        )
    )
    return constraints


class Pool(models.Model):
    """A group of agents serving one model under a desired state of its own.

    Clients reach it by its name or one of its aliases (the ``model`` of an
    OpenAI request).  The pool ``default`` always exists (migration
    ``balancer.0002``): Paddler's API and agents started without ``--pool``
    use it.
    """

    name = models.CharField(max_length=63, unique=True)
    aliases = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


def default_pool_id() -> int:
    """The default pool, for a revision made without naming one (made anew
    should a flushed database have lost it)."""
    pool, _ = Pool.objects.get_or_create(name=DEFAULT_POOL)
    return pool.pk


class DesiredStateRevisionQuerySet(models.QuerySet["DesiredStateRevision"]):
    def newest_first(self) -> DesiredStateRevisionQuerySet:
        return self.order_by("-created_at", "-id")


class DesiredStateRevision(models.Model):
    """One version of the desired state: model sources, chat template, parameters.

    Why columns and not the wire JSON: the desired state has a fixed shape
    (Paddler's), and as columns the database holds Paddler's defaults, refuses
    what agents would refuse (check constraints), and the admin can filter and
    search revisions by model source.  Every ``ModelSource`` field and every
    ``InferenceParameters`` field has a column of the same name, so the
    conversion both ways is one loop and a field added to one but not the
    other fails ``tests/test_revisions.py`` at once.  The framework-free
    ``DesiredState`` stays the one validator of what operators send; the
    columns are only its storage.

    A revision is never edited: a change, or a roll back, adds a new one.
    """

    pool = models.ForeignKey(Pool, on_delete=models.CASCADE, related_name="revisions")
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    note = models.CharField(max_length=200, blank=True, default="")

    # The model, then its multimodal projection: one kind and the columns it
    # uses (the others stay empty, see the constraints).
    model_kind = models.CharField(
        max_length=16, choices=ModelSourceKind, default=ModelSourceKind.NONE
    )
    model_local_path = models.TextField(blank=True, default="")
    model_repo_id = models.TextField("Hugging Face repo id", blank=True, default="")
    model_filename = models.TextField("Hugging Face filename", blank=True, default="")
    model_revision = models.TextField("Hugging Face revision", blank=True, default="")
    model_url = models.TextField("URL", blank=True, default="")
    multimodal_projection_kind = models.CharField(
        max_length=16, choices=ModelSourceKind, default=ModelSourceKind.NONE
    )
    multimodal_projection_local_path = models.TextField(blank=True, default="")
    multimodal_projection_repo_id = models.TextField(
        "Hugging Face repo id", blank=True, default=""
    )
    multimodal_projection_filename = models.TextField(
        "Hugging Face filename", blank=True, default=""
    )
    multimodal_projection_revision = models.TextField(
        "Hugging Face revision", blank=True, default=""
    )
    multimodal_projection_url = models.TextField("URL", blank=True, default="")

    # None (no override) differs from an empty template.
    chat_template_override = models.TextField(null=True, blank=True)  # noqa: DJ001
    use_chat_template_override = models.BooleanField(default=False)
    default_system_prompt = models.TextField(blank=True, default="")

    # Inference parameters, with Paddler's defaults (PROTOCOL.md).
    n_batch = models.IntegerField(default=2048)
    context_size = models.IntegerField(default=8192)
    embedding_batch_size = models.IntegerField(default=256)
    enable_embeddings = models.BooleanField(default=False)
    image_resize_to_fit = models.IntegerField(default=1024)
    k_cache_dtype = models.CharField(
        max_length=8, choices=KV_CACHE_DTYPE_CHOICES, default="Q8_0"
    )
    v_cache_dtype = models.CharField(
        max_length=8, choices=KV_CACHE_DTYPE_CHOICES, default="Q8_0"
    )
    min_p = models.FloatField(default=0.05)
    n_gpu_layers = models.IntegerField(default=0)
    penalty_frequency = models.FloatField(default=0.0)
    penalty_last_n = models.IntegerField(default=-1)
    penalty_presence = models.FloatField(default=0.8)
    penalty_repeat = models.FloatField(default=1.1)
    pooling_type = models.CharField(
        max_length=16, choices=POOLING_TYPE_CHOICES, default="Last"
    )
    temperature = models.FloatField(default=0.8)
    top_k = models.IntegerField(default=80)
    top_p = models.FloatField(default=0.8)

    objects = DesiredStateRevisionQuerySet.as_manager()

    class Meta:
        db_table = _TABLE
        ordering = ["-created_at", "-id"]
        constraints = [
            *_model_source_constraints("model"),
            *_model_source_constraints("multimodal_projection"),
            *_inference_parameter_constraints(),
        ]

    def __str__(self) -> str:
        return f"revision {self.pk} ({self.created_at:%Y-%m-%d %H:%M:%S})"

    def save(self, *args: Any, **kwargs: Any) -> None:
        # Made without naming a pool: the default pool's.  Not a field
        # default, which would query the database whenever a revision is
        # instantiated.
        if self.pool_id is None:
            self.pool_id = default_pool_id()
        super().save(*args, **kwargs)

    def model_source(self, source: str) -> ModelSource:
        """``source`` is ``"model"`` or ``"multimodal_projection"``."""
        return ModelSource(
            kind=getattr(self, f"{source}_kind"),
            **{name: getattr(self, f"{source}_{name}") for name in MODEL_SOURCE_FIELDS},
        )

    def to_state(self) -> DesiredState:
        return DesiredState(
            model=self.model_source("model"),
            multimodal_projection=self.model_source("multimodal_projection"),
            chat_template_override=self.chat_template_override,
            use_chat_template_override=self.use_chat_template_override,
            default_system_prompt=self.default_system_prompt,
            inference_parameters=InferenceParameters(
                **{name: getattr(self, name) for name in INFERENCE_PARAMETERS}
            ),
        )

    @classmethod
    def fields_from_state(cls, state: DesiredState) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "chat_template_override": state.chat_template_override,
            "use_chat_template_override": state.use_chat_template_override,
            "default_system_prompt": state.default_system_prompt,
            **dataclasses.asdict(state.inference_parameters),
        }
        for source in MODEL_SOURCES:
            value: ModelSource = getattr(state, source)
            fields[f"{source}_kind"] = value.kind
            for name in MODEL_SOURCE_FIELDS:
                fields[f"{source}_{name}"] = getattr(value, name)
        return fields

    def validate_for_storage(self) -> None:
        """Raise ``DesiredStateError`` for what the database cannot hold.

        ``DesiredState`` has already checked the values; what is left are the
        database's own limits, such as an integer wider than its column
        (32 bits on PostgreSQL), which would otherwise fail as a 500.
        """
        try:
            self.full_clean(exclude=["created_by", "pool"], validate_unique=False)
        except ValidationError as error:
            name, messages = next(iter(error.message_dict.items()))
            raise DesiredStateError(_wire_field(name), " ".join(messages)) from None


def _wire_field(column: str) -> str:
    """The dotted name the API uses for ``column`` (``DesiredStateError.field``)."""
    if column in INFERENCE_PARAMETERS:
        return f"inference_parameters.{column}"
    for source in MODEL_SOURCES:
        if column.startswith(f"{source}_"):
            return source
    return "body" if column == NON_FIELD_ERRORS else column
