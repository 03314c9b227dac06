"""The desired state of the fleet: which model, which template, which parameters.

Framework-free: the web tier validates what operators PUT with it, and agents
read what they are told to apply with it.  The JSON form is Paddler's.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

KV_CACHE_DTYPES = (
    "F32",
    "F16",
    "BF16",
    "Q8_0",
    "Q4_0",
    "Q4_1",
    "IQ4_NL",
    "Q5_0",
    "Q5_1",
)
POOLING_TYPES = ("Unspecified", "None", "Mean", "Cls", "Last", "Rank")


@dataclass(frozen=True)
class Bounds:
    """The range a number of the inference parameters must lie in."""

    low: float
    high: float
    # True when ``low`` itself is refused (a divisor must not be 0).
    above: bool = False
    # What the special values mean, for the error message.
    meaning: str = ""

    def message(self) -> str:
        low, high = _plain(self.low), _plain(self.high)
        text = (
            f"must be above {low} and at most {high}"
            if self.above
            else f"must be between {low} and {high}"
        )
        return f"{text} ({self.meaning})" if self.meaning else text


def _plain(number: float) -> str:
    return str(int(number)) if number == int(number) else str(number)


# Every number of the inference parameters, with its range.  The upper bounds
# are generous for real GPU hosts, yet keep what an agent allocates from them
# within reach of a host: llama.cpp allocates a batch of ``n_batch`` tokens
# (and an embedding context of ``embedding_batch_size``), a KV cache of
# ``context_size`` x slots cells and a penalty window of ``penalty_last_n``
# tokens per slot, up front; and every value fits the C ``int32`` llama.cpp
# keeps it in (2^31 would wrap, or ask for gigabytes and kill the agent).
# 1,048,576 tokens is the longest context open models train for (Qwen2.5-1M);
# no model has more than a few hundred layers, nor a vocabulary (``top_k``) of
# a million tokens; an image side of 16,384 pixels is above any vision
# encoder's input.  Sampling values beyond these ranges change nothing more (a
# temperature of 100 is already noise) and OpenAI's penalties stop at 2.
NUMBER_RANGES: dict[str, Bounds] = {
    "n_batch": Bounds(1, 65_536),
    "context_size": Bounds(1, 1_048_576),
    "embedding_batch_size": Bounds(1, 65_536),
    "image_resize_to_fit": Bounds(1, 16_384),
    "n_gpu_layers": Bounds(-1, 4_096, meaning="-1: all layers, 0: CPU only"),
    "top_k": Bounds(0, 1_000_000, meaning="0: off"),
    "top_p": Bounds(0, 1),
    "min_p": Bounds(0, 1),
    "temperature": Bounds(0, 100),
    "penalty_last_n": Bounds(-1, 1_048_576, meaning="-1: the whole context, 0: off"),
    "penalty_repeat": Bounds(0, 100, above=True, meaning="1: off"),
    "penalty_presence": Bounds(-100, 100, meaning="0: off"),
    "penalty_frequency": Bounds(-100, 100, meaning="0: off"),
}


class DesiredStateError(ValueError):
    """A value that cannot be applied; ``field`` names it in dotted form."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class InferenceParameters:
    n_batch: int = 2048
    context_size: int = 8192
    embedding_batch_size: int = 256
    enable_embeddings: bool = False
    image_resize_to_fit: int = 1024
    k_cache_dtype: str = "Q8_0"
    v_cache_dtype: str = "Q8_0"
    min_p: float = 0.05
    n_gpu_layers: int = 0
    penalty_frequency: float = 0.0
    penalty_last_n: int = -1
    penalty_presence: float = 0.8
    penalty_repeat: float = 1.1
    pooling_type: str = "Last"
    temperature: float = 0.8
    top_k: int = 80
    top_p: float = 0.8

    @classmethod
    def from_json(cls, data: Any) -> InferenceParameters:
        where = "inference_parameters"
        if not isinstance(data, dict):
            raise DesiredStateError(where, "must be an object")
        known = {f.name: f for f in dataclasses.fields(cls)}
        for key in data:
            if key not in known:
                raise DesiredStateError(f"{where}.{key}", "unknown field")
        values: dict[str, Any] = {}
        for name, spec in known.items():
            if name not in data:
                continue
            value = data[name]
            path = f"{where}.{name}"
            default = spec.default
            if isinstance(default, bool):
                if not isinstance(value, bool):
                    raise DesiredStateError(path, "must be true or false")
            elif isinstance(default, int):
                if isinstance(value, bool) or not isinstance(value, int):
                    raise DesiredStateError(path, "must be an integer")
            elif isinstance(default, float):
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise DesiredStateError(path, "must be a number")
                value = float(value)
            elif not isinstance(value, str):
                raise DesiredStateError(path, "must be a string")
            values[name] = value
        parameters = cls(**values)
        parameters.validate()
        return parameters

    def validate(self) -> None:
        where = "inference_parameters"
        for name, bounds in NUMBER_RANGES.items():
            value = getattr(self, name)
            # NaN fails every comparison, so it is refused here too.
            low_ok = value > bounds.low if bounds.above else value >= bounds.low
            if not (low_ok and value <= bounds.high):
                raise DesiredStateError(f"{where}.{name}", bounds.message())
        for name in ("k_cache_dtype", "v_cache_dtype"):
            if getattr(self, name) not in KV_CACHE_DTYPES:
                raise DesiredStateError(
                    f"{where}.{name}", f"must be one of {', '.join(KV_CACHE_DTYPES)}"
                )
        if self.pooling_type not in POOLING_TYPES:
            raise DesiredStateError(
                f"{where}.pooling_type", f"must be one of {', '.join(POOLING_TYPES)}"
            )

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_HF_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class ModelSource:
    """Where an agent gets a GGUF file: nowhere, a local path, Hugging Face, a URL."""

    kind: str = "None"
    local_path: str = ""
    repo_id: str = ""
    filename: str = ""
    revision: str = ""
    url: str = ""

    @classmethod
    def from_json(cls, data: Any, where: str) -> ModelSource:
        if data == "None" or data is None:
            return cls()
        if not isinstance(data, dict) or len(data) != 1:
            raise DesiredStateError(
                where,
                'must be "None", {"LocalToAgent": ...}, '
                '{"HuggingFace": {...}} or {"Url": {...}}',
            )
        ((variant, payload),) = data.items()
        if variant == "LocalToAgent":
            if not isinstance(payload, str) or not payload.startswith("/"):
                raise DesiredStateError(
                    f"{where}.LocalToAgent", "must be an absolute path on the agent"
                )
            return cls(kind="LocalToAgent", local_path=payload)
        if variant == "HuggingFace":
            path = f"{where}.HuggingFace"
            if not isinstance(payload, dict):
                raise DesiredStateError(path, "must be an object")
            for key in payload:
                if key not in ("repo_id", "filename", "revision"):
                    raise DesiredStateError(f"{path}.{key}", "unknown field")
            repo_id = payload.get("repo_id")
            filename = payload.get("filename")
            revision = payload.get("revision", "main")
            if not isinstance(repo_id, str) or not _HF_REPO_ID.match(repo_id):
                raise DesiredStateError(
                    f"{path}.repo_id", 'must look like "owner/name"'
                )
            if not isinstance(filename, str) or not filename or ".." in filename:
                raise DesiredStateError(f"{path}.filename", "must be a file name")
            if not isinstance(revision, str) or not revision:
                raise DesiredStateError(f"{path}.revision", "must be a revision")
            return cls(
                kind="HuggingFace",
                repo_id=repo_id,
                filename=filename,
                revision=revision,
            )
        if variant == "Url":
            path = f"{where}.Url"
            if not isinstance(payload, dict) or set(payload) != {"url"}:
                raise DesiredStateError(path, 'must be {"url": "http(s)://..."}')
            url = payload["url"]
            if not isinstance(url, str) or not url.startswith(("http://", "https://")):
                raise DesiredStateError(f"{path}.url", "must be an http(s) URL")
            return cls(kind="Url", url=url)
        raise DesiredStateError(where, f"unknown model source {variant!r}")

    def to_json(self) -> str | dict[str, Any]:
        if self.kind == "LocalToAgent":
            return {"LocalToAgent": self.local_path}
        if self.kind == "HuggingFace":
            return {
                "HuggingFace": {
                    "repo_id": self.repo_id,
                    "filename": self.filename,
                    "revision": self.revision,
                }
            }
        if self.kind == "Url":
            return {"Url": {"url": self.url}}
        return "None"


# Fields of ours in the desired state, beside Paddler's.
EXTENSION_FIELDS = ("default_system_prompt",)


@dataclass(frozen=True)
class DesiredState:
    model: ModelSource = field(default_factory=ModelSource)
    multimodal_projection: ModelSource = field(default_factory=ModelSource)
    chat_template_override: str | None = None
    use_chat_template_override: bool = False
    default_system_prompt: str = ""
    inference_parameters: InferenceParameters = field(
        default_factory=InferenceParameters
    )

    @classmethod
    def from_json(cls, data: Any) -> DesiredState:
        if not isinstance(data, dict):
            raise DesiredStateError("body", "must be a JSON object")
        allowed = {
            "model",
            "multimodal_projection",
            "chat_template_override",
            "use_chat_template_override",
            "default_system_prompt",
            "inference_parameters",
        }
        for key in data:
            if key not in allowed:
                raise DesiredStateError(key or '""', "unknown field")
        template = data.get("chat_template_override")
        if template is not None:
            if (
                not isinstance(template, dict)
                or set(template) != {"content"}
                or not isinstance(template["content"], str)
            ):
                raise DesiredStateError(
                    "chat_template_override", 'must be null or {"content": "..."}'
                )
            template = template["content"]
        use_override = data.get("use_chat_template_override", False)
        if not isinstance(use_override, bool):
            raise DesiredStateError("use_chat_template_override", "must be a boolean")
        if use_override and template is None:
            raise DesiredStateError(
                "chat_template_override",
                "is required when use_chat_template_override is true",
            )
        system_prompt = data.get("default_system_prompt", "")
        if not isinstance(system_prompt, str):
            raise DesiredStateError("default_system_prompt", "must be a string")
        return cls(
            model=ModelSource.from_json(data.get("model", "None"), "model"),
            multimodal_projection=ModelSource.from_json(
                data.get("multimodal_projection", "None"), "multimodal_projection"
            ),
            chat_template_override=template,
            use_chat_template_override=use_override,
            default_system_prompt=system_prompt,
            inference_parameters=InferenceParameters.from_json(
                data.get("inference_parameters", {})
            ),
        )

    def to_paddler_json(self) -> dict[str, Any]:
        """Paddler's ``BalancerDesiredState``: what a strict Paddler client
        reads (it refuses unknown fields), without our extensions."""
        return {
            key: value
            for key, value in self.to_json().items()
            if key not in EXTENSION_FIELDS
        }

    def to_agent_json(self) -> dict[str, Any]:
        """Paddler's ``AgentDesiredState``, the balancer's applicable state:
        the template override only when it is to be used."""
        return {
            "chat_template_override": (
                {"content": self.chat_template_override}
                if self.use_chat_template_override
                and self.chat_template_override is not None
                else None
            ),
            "inference_parameters": self.inference_parameters.to_json(),
            "model": self.model.to_json(),
            "multimodal_projection": self.multimodal_projection.to_json(),
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model.to_json(),
            "multimodal_projection": self.multimodal_projection.to_json(),
            "chat_template_override": (
                None
                if self.chat_template_override is None
                else {"content": self.chat_template_override}
            ),
            "use_chat_template_override": self.use_chat_template_override,
            "default_system_prompt": self.default_system_prompt,
            "inference_parameters": self.inference_parameters.to_json(),
        }
