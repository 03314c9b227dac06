"""What a model offers: its chat templates, special tokens, context length,
and the tool-call and reasoning formats of the template in use.

Framework-free.  The agent builds a ``ModelOffer`` from its model's GGUF
metadata when it loads it and stores it next to the metadata in Redis; the
panel's model page shows it.  The formats are told from the template's text:
the markers a family's template writes around a tool call or a thought are
the same markers its model generates, so they also choose how the agent
reads the model's output (``balancer.tool_calls``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

ToolCallFormat = Literal[
    "hermes", "llama3", "mistral", "harmony", "deepseek", "generic"
]
ReasoningFormat = Literal["think_tags", "harmony", "none"]

# GGUF keys of the model's templates: the default and its named variants.
TEMPLATE_KEY = "tokenizer.chat_template"
VARIANT_PREFIX = "tokenizer.chat_template."
# The variants Hugging Face picks by the request: tools offered, documents.
TOOL_USE = "tool_use"
RAG = "rag"

# The marker each family's template writes around a tool call, most specific
# first: a harmony template also mentions JSON, a Llama one <|python_tag|>.
_TOOL_MARKERS: tuple[tuple[str, ToolCallFormat], ...] = (
    ("<|channel|>", "harmony"),
    ("tool▁calls▁begin", "deepseek"),
    ("tool_calls_begin", "deepseek"),
    ("[TOOL_CALLS]", "mistral"),
    ("<tool_call>", "hermes"),
    ("<|python_tag|>", "llama3"),
    ("<|start_header_id|>", "llama3"),
)


def detect_tool_call_format(source: str | None) -> ToolCallFormat:
    """The tool-call format a template's model writes; ``generic`` (a JSON
    object with ``name`` and ``arguments``) for a template with none of the
    families' markers, or no template."""
    if source:
        for marker, name in _TOOL_MARKERS:
            if marker in source:
                return name
    return "generic"


def detect_reasoning_format(source: str | None) -> ReasoningFormat:
    """How a template's model sets its reasoning apart, if it does."""
    if not source:
        return "none"
    if "<|channel|>" in source and "analysis" in source:
        return "harmony"
    if "<think>" in source or "</think>" in source:
        return "think_tags"
    return "none"


def template_variants(metadata: dict[str, str]) -> dict[str, str]:
    """The model's templates by name: ``default`` and the named variants
    (``tool_use``, ``rag``, ...) its GGUF holds."""
    templates: dict[str, str] = {}
    if metadata.get(TEMPLATE_KEY):
        templates["default"] = metadata[TEMPLATE_KEY]
    for key, value in metadata.items():
        if key.startswith(VARIANT_PREFIX) and value:
            name = key[len(VARIANT_PREFIX) :]
            # "tokenizer.chat_templates" (a list of names) is not a variant.
            if name and "." not in name:
                templates[name] = value
    return templates


def context_length(metadata: dict[str, str]) -> int | None:
    """The context the model was trained for (``<arch>.context_length``)."""
    architecture = metadata.get("general.architecture", "")
    raw = metadata.get(f"{architecture}.context_length")
    try:
        return int(raw) if raw is not None else None
    except ValueError:
        return None


@dataclass(frozen=True)
class ModelOffer:
    architecture: str | None
    name: str | None
    context_length: int | None
    bos_token: str
    eos_token: str
    # Names of the model's own templates (``default``, ``tool_use``, ...).
    chat_templates: list[str]
    # The template in use: the override or the model's own default.
    uses_override: bool
    tool_call_format: ToolCallFormat
    reasoning_format: ReasoningFormat

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def model_offer(
    metadata: dict[str, str],
    *,
    template_in_use: str | None,
    uses_override: bool,
    bos_token: str,
    eos_token: str,
) -> ModelOffer:
    return ModelOffer(
        architecture=metadata.get("general.architecture"),
        name=metadata.get("general.name"),
        context_length=context_length(metadata),
        bos_token=bos_token,
        eos_token=eos_token,
        chat_templates=sorted(template_variants(metadata)),
        uses_override=uses_override,
        tool_call_format=detect_tool_call_format(template_in_use),
        reasoning_format=detect_reasoning_format(template_in_use),
    )
