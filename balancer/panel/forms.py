"""The panel's forms: the desired state and inference API keys.

Values are checked by the same rules as the management API
(``balancer.desired_state``); an error that names a field shows next to it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django import forms
from django.core.exceptions import ValidationError

from balancer.authentication import is_staff_user
from balancer.chat_template import ChatTemplateError, compile_template
from balancer.desired_state import (
    KV_CACHE_DTYPES,
    POOLING_TYPES,
    DesiredState,
    DesiredStateError,
    InferenceParameters,
    ModelSource,
)
from balancer.login_limits import LimitedAuthenticationForm

# Label and one-line help of every inference parameter, in the order shown.
PARAMETERS: dict[str, tuple[str, str]] = {
    "temperature": (
        "Temperature",
        "Randomness of sampling; 0 always picks the most likely token.",
    ),
    "top_k": ("Top k", "Sample among the k most likely tokens only; 0 is off."),
    "top_p": (
        "Top p",
        "Sample among the most likely tokens that add up to p; 1 is off.",
    ),
    "min_p": (
        "Min p",
        "Drop tokens less likely than this share of the likeliest; 0 is off.",
    ),
    "penalty_repeat": (
        "Repeat penalty",
        "Divides the odds of tokens seen recently; 1 is off.",
    ),
    "penalty_presence": (
        "Presence penalty",
        "Lowers tokens that appeared at all in the recent window; 0 is off.",
    ),
    "penalty_frequency": (
        "Frequency penalty",
        "Lowers tokens by how often they appeared recently; 0 is off.",
    ),
    "penalty_last_n": (
        "Penalty window",
        "Recent tokens the penalties look at; -1 is the whole context, 0 off.",
    ),
    "context_size": (
        "Context size",
        "Tokens of context per slot: the prompt plus the answer.",
    ),
    "n_batch": (
        "Batch size",
        "Prompt tokens llama.cpp evaluates per step; more is faster, uses memory.",
    ),
    "n_gpu_layers": (
        "GPU layers",
        "Model layers offloaded to the GPU; 0 is CPU only, -1 is all.",
    ),
    "k_cache_dtype": (
        "K cache type",
        "Number format of the KV cache's keys; smaller saves memory.",
    ),
    "v_cache_dtype": (
        "V cache type",
        "Number format of the KV cache's values; smaller saves memory.",
    ),
    "enable_embeddings": (
        "Enable embeddings",
        "Load a second context so that the agent can compute embeddings.",
    ),
    "embedding_batch_size": (
        "Embedding batch size",
        "Tokens embedded together in one batch.",
    ),
    "pooling_type": (
        "Pooling type",
        "How token vectors combine into one embedding per document.",
    ),
    "image_resize_to_fit": (
        "Image size",
        "Longest side, in pixels, that images are scaled to (multimodal models).",
    ),
}

MODEL_SOURCES = [
    ("None", "No model"),
    ("LocalToAgent", "A file on the agent"),
    ("HuggingFace", "Hugging Face"),
    ("Url", "A URL"),
]
TEMPLATE_CHOICES = [
    ("model", "The model's own template"),
    ("override", "An override"),
]
# The desired state's model sources, by the prefix of their form fields.
SOURCES = {"model": "model", "mmproj": "multimodal_projection"}
# The fields each kind of source needs, after the prefix.
SOURCE_FIELDS = {
    "LocalToAgent": ("local_path",),
    "HuggingFace": ("hf_repo_id", "hf_filename", "hf_revision"),
    "Url": ("url",),
}


def _error_fields() -> dict[str, str]:
    """Where an error that ``DesiredState.from_json`` names belongs on the form."""
    fields = {
        "chat_template_override": "chat_template_override",
        "use_chat_template_override": "template_choice",
        "default_system_prompt": "default_system_prompt",
    }
    for prefix, key in SOURCES.items():
        fields[key] = f"{prefix}_source"
        fields[f"{key}.LocalToAgent"] = f"{prefix}_local_path"
        fields[f"{key}.HuggingFace"] = f"{prefix}_hf_repo_id"
        for part in ("repo_id", "filename", "revision"):
            fields[f"{key}.HuggingFace.{part}"] = f"{prefix}_hf_{part}"
        fields[f"{key}.Url"] = fields[f"{key}.Url.url"] = f"{prefix}_url"
    return fields


ERROR_FIELDS = _error_fields()


def _source_fields(prefix: str, label: str, what: str) -> dict[str, forms.Field]:
    return {
        f"{prefix}_source": forms.ChoiceField(
            label=label, choices=MODEL_SOURCES, widget=forms.RadioSelect
        ),
        f"{prefix}_local_path": forms.CharField(
            label="Path on the agent",
            required=False,
            help_text=f"Absolute path of the {what} (GGUF) on every agent host.",
        ),
        f"{prefix}_hf_repo_id": forms.CharField(
            label="Repository",
            required=False,
            help_text='For example "unsloth/Qwen3-0.6B-GGUF".',
        ),
        f"{prefix}_hf_filename": forms.CharField(
            label="File",
            required=False,
            help_text="The GGUF file in that repository.",
        ),
        f"{prefix}_hf_revision": forms.CharField(
            label="Revision",
            required=False,
            widget=forms.TextInput(attrs={"placeholder": "main"}),
            help_text="Branch, tag or commit; main when empty.",
        ),
        f"{prefix}_url": forms.CharField(
            label="URL",
            required=False,
            help_text=f"An http(s) URL of the {what}; agents download it once.",
        ),
    }


def _source_initial(prefix: str, source: ModelSource) -> dict[str, Any]:
    return {
        f"{prefix}_source": source.kind,
        f"{prefix}_local_path": source.local_path,
        f"{prefix}_hf_repo_id": source.repo_id,
        f"{prefix}_hf_filename": source.filename,
        f"{prefix}_hf_revision": source.revision,
        f"{prefix}_url": source.url,
    }


def _source_json(prefix: str, data: dict[str, Any]) -> str | dict[str, Any]:
    """The serde form of the source that ``prefix``'s fields describe."""

    def value(name: str) -> str:
        return str(data.get(f"{prefix}_{name}") or "").strip()

    kind = data.get(f"{prefix}_source")
    if kind == "LocalToAgent":
        return {"LocalToAgent": value("local_path")}
    if kind == "HuggingFace":
        return {
            "HuggingFace": {
                "repo_id": value("hf_repo_id"),
                "filename": value("hf_filename"),
                "revision": value("hf_revision") or "main",
            }
        }
    if kind == "Url":
        return {"Url": {"url": value("url")}}
    return "None"


@dataclass(frozen=True)
class SourceGroup:
    """A model source's fields, as the template lays them out."""

    prefix: str
    choice: forms.BoundField
    variants: list[tuple[str, list[forms.BoundField]]]


def _parameter_field(spec: dataclasses.Field[Any]) -> forms.Field:
    label, help_text = PARAMETERS[spec.name]
    default = spec.default
    common: dict[str, Any] = {"label": label, "help_text": help_text}
    if isinstance(default, bool):
        return forms.BooleanField(required=False, **common)
    if isinstance(default, int):
        return forms.IntegerField(**common)
    if isinstance(default, float):
        return forms.FloatField(
            widget=forms.NumberInput(attrs={"step": "any"}), **common
        )
    choices = KV_CACHE_DTYPES if spec.name.endswith("_dtype") else POOLING_TYPES
    return forms.ChoiceField(choices=[(c, c) for c in choices], **common)


def form_field_for(error_field: str) -> str | None:
    """The form field that a ``DesiredStateError``'s dotted field names."""
    if error_field.startswith("inference_parameters."):
        name = error_field.split(".", 1)[1]
        return name if name in PARAMETERS else None
    return ERROR_FIELDS.get(error_field)


class DesiredStateForm(forms.Form):
    """The desired state, as an operator edits it.

    After ``is_valid()``, ``state`` is the state to save.
    """

    template_choice = forms.ChoiceField(
        label="Chat template", choices=TEMPLATE_CHOICES, widget=forms.RadioSelect
    )
    chat_template_override = forms.CharField(
        label="Template override",
        required=False,
        strip=False,
        widget=forms.Textarea(attrs={"rows": 14, "spellcheck": "false"}),
        help_text="Jinja, as in Hugging Face's apply_chat_template.",
    )
    default_system_prompt = forms.CharField(
        label="Default system prompt",
        required=False,
        strip=False,
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text="Opens every conversation that brings no system message.",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.state: DesiredState | None = None
        self.fields.update(_source_fields("model", "Model source", "model"))
        self.fields.update(
            _source_fields("mmproj", "Multimodal projection", "multimodal projection")
        )
        fields = {f.name: f for f in dataclasses.fields(InferenceParameters)}
        for name in PARAMETERS:
            self.fields[name] = _parameter_field(fields[name])

    @classmethod
    def initial_from(cls, state: DesiredState) -> dict[str, Any]:
        initial: dict[str, Any] = {
            **_source_initial("model", state.model),
            **_source_initial("mmproj", state.multimodal_projection),
            "template_choice": (
                "override" if state.use_chat_template_override else "model"
            ),
            "chat_template_override": state.chat_template_override or "",
            "default_system_prompt": state.default_system_prompt,
        }
        initial.update(state.inference_parameters.to_json())
        return initial

    def source_group(self, prefix: str) -> SourceGroup:
        return SourceGroup(
            prefix=prefix,
            choice=self[f"{prefix}_source"],
            variants=[
                (kind, [self[f"{prefix}_{name}"] for name in names])
                for kind, names in SOURCE_FIELDS.items()
            ],
        )

    def model_fields(self) -> SourceGroup:
        return self.source_group("model")

    def multimodal_fields(self) -> SourceGroup:
        return self.source_group("mmproj")

    def parameter_fields(self) -> list[forms.BoundField]:
        return [self[name] for name in PARAMETERS]

    def clean(self) -> dict[str, Any]:
        """Check every field, so that all errors show at once, then the state."""
        data = super().clean() or {}
        for name in PARAMETERS:
            if name in data:
                self._check(InferenceParameters.from_json, {name: data[name]})
        for prefix, key in SOURCES.items():
            if f"{prefix}_source" in data:
                self._check(ModelSource.from_json, _source_json(prefix, data), key)
        use_override = data.get("template_choice") == "override"
        template = data.get("chat_template_override", "")
        if use_override and not template.strip():
            self.add_error(
                "chat_template_override", "Write a template, or use the model's own."
            )
        elif use_override:
            try:
                compile_template(template)
            except ChatTemplateError as error:
                self.add_error("chat_template_override", str(error))
        if self.errors:
            return data
        body = {
            "model": _source_json("model", data),
            "multimodal_projection": _source_json("mmproj", data),
            # An unused override is kept, as Paddler does, unless emptied.
            "chat_template_override": {"content": template} if template else None,
            "use_chat_template_override": use_override,
            "default_system_prompt": data.get("default_system_prompt", ""),
            "inference_parameters": {name: data[name] for name in PARAMETERS},
        }
        try:
            self.state = DesiredState.from_json(body)
        except DesiredStateError as error:
            self.add_state_error(error)
        return data

    def _check(self, parse: Callable[..., object], *args: Any) -> None:
        try:
            parse(*args)
        except DesiredStateError as error:
            self.add_state_error(error)

    def add_state_error(self, error: DesiredStateError) -> None:
        """Show ``error`` next to the field it names (or above the form)."""
        field = form_field_for(error.field)
        if field is None:
            self.add_error(None, str(error))
        else:
            self.add_error(field, error.message[:1].upper() + error.message[1:] + ".")
        self.state = None


class TemplatePreviewForm(forms.Form):
    template = forms.CharField(required=False, strip=False)
    default_system_prompt = forms.CharField(required=False, strip=False)


class ApiKeyForm(forms.Form):
    name = forms.CharField(
        label="Name",
        max_length=100,
        help_text="Who or what uses the key, e.g. “mobile app”.",
        error_messages={"required": "Give the key a name."},
    )


class StaffAuthenticationForm(LimitedAuthenticationForm):
    """The panel's login: only staff accounts may use it, so many tries at a
    time (``balancer.login_limits``)."""

    def confirm_login_allowed(self, user: Any) -> None:
        super().confirm_login_allowed(user)
        if not is_staff_user(user):
            raise ValidationError(
                "This account may not use the panel: it is not a staff account.",
                code="not_staff",
            )
