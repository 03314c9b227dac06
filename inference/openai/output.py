"""What the agents' output items mean to an OpenAI client.

Framework-free.  A generation's items are read as text, its end (with the
agent's token counts), or an error; an embedding batch's items are gathered
into vectors.  ``responses`` shapes OpenAI's objects from what is read here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from balancer.contract import (
    DocumentEmbedding,
    DocumentFailed,
    Done,
    EmbeddingDone,
    Failure,
    GenerationFailed,
    OutputItem,
    Token,
    Usage,
    read_output,
)
from inference.openai.errors import OpenAIError, invalid


@dataclass(frozen=True)
class TextPiece:
    text: str


@dataclass(frozen=True)
class Finished:
    """The end of a generation, with the agent's token counts."""

    usage: Usage

    @property
    def completion_tokens(self) -> int:
        usage = self.usage
        return (
            int(usage.get("content_tokens", 0))
            + int(usage.get("reasoning_tokens", 0))
            + int(usage.get("tool_call_tokens", 0))
            + int(usage.get("undeterminable_tokens", 0))
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


def read_generation_item(item: OutputItem) -> TextPiece | Finished | OpenAIError | None:
    """What one output item means to an OpenAI client; None: nothing."""
    output = read_output(item)
    if isinstance(output, Failure):
        return OpenAIError(output.code, output.description)
    if isinstance(output, Token):
        # Reasoning is not part of the answer.
        return None if output.variant == "ReasoningToken" else TextPiece(output.text)
    if isinstance(output, Done):
        return Finished(output.usage)
    if isinstance(output, GenerationFailed):
        variant, detail = output.variant, output.detail
        if variant in _CLIENT_FAULTS:
            param, code = _CLIENT_FAULTS[variant]
            return OpenAIError(400, f"{variant}: {detail}", param=param, code=code)
        return OpenAIError(500, f"{variant}: {detail}")
    return OpenAIError(502, f"unexpected output from the agent: {item['response']!r}")


@dataclass
class EmbeddingResults:
    """Vectors gathered from an embedding stream, by input index."""

    count: int
    vectors: dict[int, list[float]] = field(default_factory=dict)
    done: bool = False

    def add(self, item: OutputItem) -> None:
        """Take one output item; raises ``OpenAIError`` for a failure."""
        output = read_output(item)
        if isinstance(output, Failure):
            raise OpenAIError(output.code, output.description)
        if isinstance(output, EmbeddingDone):
            self.done = True
        elif isinstance(output, DocumentFailed):
            raise invalid("input", output.description)
        elif isinstance(output, DocumentEmbedding):
            index = int(output.source_document_id)
            self.vectors[index] = output.embedding
        else:
            raise OpenAIError(
                502, f"unexpected output from the agent: {item['response']!r}"
            )

    def in_order(self) -> list[list[float]]:
        """The vectors in input order; ``OpenAIError`` if one never came."""
        missing = [i for i in range(self.count) if i not in self.vectors]
        if missing:
            raise OpenAIError(502, f"the agent returned no vector for input {missing}")
        return [self.vectors[index] for index in range(self.count)]
