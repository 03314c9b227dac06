"""What the agents' output items mean to an OpenAI client.

Framework-free.  A generation's items are read as text, its end (with the
agent's token counts), or an error; an embedding batch's items are gathered
into vectors.  ``responses`` shapes OpenAI's objects from what is read here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from balancer.events import OutputItem
from inference.openai.errors import OpenAIError, invalid


@dataclass(frozen=True)
class TextPiece:
    text: str


@dataclass(frozen=True)
class Finished:
    """The end of a generation, with the agent's token counts."""

    usage: dict[str, Any]

    @property
    def completion_tokens(self) -> int:
        return sum(
            int(self.usage.get(name, 0))
            for name in (
                "content_tokens",
                "reasoning_tokens",
                "tool_call_tokens",
                "undeterminable_tokens",
            )
        )

    def finish_reason(self, max_tokens: int) -> str:
        # The agent's Done does not say why it stopped; having produced all the
        # tokens allowed is what "length" means.
        return "length" if self.completion_tokens >= max_tokens else "stop"

    def openai_usage(self) -> dict[str, Any]:
        prompt = int(self.usage.get("prompt_tokens", 0))
        return {
            "prompt_tokens": prompt,
            "completion_tokens": self.completion_tokens,
            "total_tokens": prompt + self.completion_tokens,
            "prompt_tokens_details": {
                "cached_tokens": int(self.usage.get("cached_prompt_tokens", 0))
            },
        }


# Terminal GeneratedToken variants that are the request's fault, by the
# parameter that caused them.
_CLIENT_FAULTS = {
    "ChatTemplateError": ("messages", "chat_template_error"),
    "GrammarSyntaxError": ("response_format", "invalid_response_format"),
    "GrammarInitializationFailed": ("response_format", "invalid_response_format"),
    "MultimodalNotSupported": ("messages", "multimodal_not_supported"),
}
# Token variants whose text is part of the answer (reasoning is not).
_TEXT_VARIANTS = ("ContentToken", "ToolCallToken", "UndeterminableToken")


def _item_error(item: OutputItem) -> OpenAIError | None:
    if item["error"] is None:
        return None
    code = int(item["error"].get("code", 500))
    description = str(item["error"].get("description", "inference failed"))
    return OpenAIError(code, description)


def read_generation_item(item: OutputItem) -> TextPiece | Finished | OpenAIError | None:
    """What one output item means to an OpenAI client; None: nothing."""
    error = _item_error(item)
    if error is not None:
        return error
    response = item["response"]
    token = response.get("GeneratedToken") if isinstance(response, dict) else None
    if not isinstance(token, dict) or len(token) != 1:
        return OpenAIError(502, f"unexpected output from the agent: {response!r}")
    ((variant, payload),) = token.items()
    if variant in _TEXT_VARIANTS:
        return TextPiece(str(payload))
    if variant == "ReasoningToken":
        return None
    if variant == "Done":
        usage = payload.get("usage", {}) if isinstance(payload, dict) else {}
        return Finished(usage)
    if variant in _CLIENT_FAULTS:
        param, code = _CLIENT_FAULTS[variant]
        return OpenAIError(400, f"{variant}: {payload}", param=param, code=code)
    return OpenAIError(500, f"{variant}: {payload}")


@dataclass
class EmbeddingResults:
    """Vectors gathered from an embedding stream, by input index."""

    count: int
    vectors: dict[int, list[float]] = field(default_factory=dict)
    done: bool = False

    def add(self, item: OutputItem) -> None:
        """Take one output item; raises ``OpenAIError`` for a failure."""
        error = _item_error(item)
        if error is not None:
            raise error
        response = item["response"]
        payload = response.get("Embedding") if isinstance(response, dict) else None
        if payload == "Done":
            self.done = True
            return
        if isinstance(payload, dict) and "Error" in payload:
            raise invalid("input", str(payload["Error"]))
        embedding = payload.get("Embedding") if isinstance(payload, dict) else None
        if not isinstance(embedding, dict):
            raise OpenAIError(502, f"unexpected output from the agent: {response!r}")
        index = int(embedding["source_document_id"])
        self.vectors[index] = list(embedding["embedding"])

    def in_order(self) -> list[list[float]]:
        """The vectors in input order; ``OpenAIError`` if one never came."""
        missing = [i for i in range(self.count) if i not in self.vectors]
        if missing:
            raise OpenAIError(502, f"the agent returned no vector for input {missing}")
        return [self.vectors[index] for index in range(self.count)]
