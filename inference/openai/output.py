"""What the agents' output items mean to an OpenAI client.

Framework-free.  A generation's items are read as text, its end (with the
agent's token counts), or an error; an embedding batch's items are gathered
into vectors.  ``responses`` shapes OpenAI's objects from what is read here.
"""

from __future__ import annotations

import json
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
    ParsedToolCallItem,
    Token,
    ToolCallsParsed,
    ToolCallsUnparsed,
    Usage,
    read_output,
)
from inference.openai.errors import OpenAIError, invalid


@dataclass(frozen=True)
class TextPiece:
    text: str


@dataclass(frozen=True)
class ReasoningPiece:
    """Reasoning, OpenAI's ``reasoning_content`` (not part of the answer)."""

    text: str


@dataclass(frozen=True)
class ToolCallText:
    """Text in which the model writes a tool call: held until the calls are
    parsed, and given back as content if they cannot be."""

    text: str


@dataclass(frozen=True)
class ToolCalls:
    """The calls parsed from the generation, in OpenAI's shape."""

    calls: list[dict[str, Any]]


@dataclass(frozen=True)
class ToolCallsFailed:
    detail: str


def openai_tool_calls(calls: list[ParsedToolCallItem]) -> list[dict[str, Any]]:
    """Paddler's parsed calls as OpenAI's ``tool_calls`` (arguments as text)."""
    result: list[dict[str, Any]] = []
    for call in calls:
        arguments = call["arguments"]
        text = (
            json.dumps(arguments["ValidJson"], ensure_ascii=False)
            if "ValidJson" in arguments
            else str(arguments.get("InvalidJson", ""))
        )
        result.append(
            {
                "id": call["id"],
                "type": "function",
                "function": {"name": call["name"], "arguments": text},
            }
        )
    return result


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
            "completion_tokens_details": {
                "reasoning_tokens": int(self.usage.get("reasoning_tokens", 0))
            },
        }


# Terminal GeneratedToken variants that are the request's fault, by the
# parameter that caused them.
_CLIENT_FAULTS = {
    "ChatTemplateError": ("messages", "chat_template_error"),
    "GrammarSyntaxError": ("response_format", "invalid_response_format"),
    "GrammarInitializationFailed": ("response_format", "invalid_response_format"),
    "MultimodalNotSupported": ("messages", "multimodal_not_supported"),
    "ImageDecodingFailed": ("messages", "image_decoding_failed"),
    "GrammarIncompatibleWithThinking": (
        "response_format",
        "grammar_incompatible_with_thinking",
    ),
    "ToolCallValidatorBuildFailed": ("tools", "invalid_tools"),
}


def generation_failed_error(variant: str, detail: str) -> OpenAIError:
    """A terminal GeneratedToken variant as an OpenAI error: 400 naming the
    parameter for the request's fault, 500 for the agent's."""
    if variant in _CLIENT_FAULTS:
        param, code = _CLIENT_FAULTS[variant]
        return OpenAIError(400, f"{variant}: {detail}", param=param, code=code)
    return OpenAIError(500, f"{variant}: {detail}")


GenerationEvent = (
    TextPiece
    | ReasoningPiece
    | ToolCallText
    | ToolCalls
    | ToolCallsFailed
    | Finished
    | OpenAIError
    | None
)


def read_generation_item(item: OutputItem) -> GenerationEvent:
    """What one output item means to an OpenAI client; None: nothing."""
    output = read_output(item)
    if isinstance(output, Failure):
        return OpenAIError(output.code, output.description)
    if isinstance(output, Token):
        if output.variant == "ReasoningToken":
            return ReasoningPiece(output.text)
        if output.variant == "ToolCallToken":
            return ToolCallText(output.text)
        return TextPiece(output.text)
    if isinstance(output, ToolCallsParsed):
        return ToolCalls(openai_tool_calls(output.calls))
    if isinstance(output, ToolCallsUnparsed):
        if output.variant == "ToolCallValidationFailed":
            # The calls were read; they are the client's to judge.
            return None
        return ToolCallsFailed(output.detail)
    if isinstance(output, Done):
        return Finished(output.usage)
    if isinstance(output, GenerationFailed):
        return generation_failed_error(output.variant, output.detail)
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


@dataclass
class Collected:
    """A whole generation, as a non-streamed response returns it."""

    content: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    calls: list[dict[str, Any]] = field(default_factory=list)
    # Tool-call text not (yet) parsed into calls.
    tool_text: list[str] = field(default_factory=list)
    finished: Finished | None = None

    def add(self, event: GenerationEvent) -> None:
        if isinstance(event, TextPiece):
            self.content.append(event.text)
        elif isinstance(event, ReasoningPiece):
            self.reasoning.append(event.text)
        elif isinstance(event, ToolCallText):
            self.tool_text.append(event.text)
        elif isinstance(event, ToolCalls):
            self.calls.extend(event.calls)
            self.tool_text.clear()
        elif isinstance(event, ToolCallsFailed):
            # Nothing the model wrote is dropped: unreadable calls are text.
            self.content.extend(self.tool_text)
            self.tool_text.clear()

    def text(self) -> str:
        return "".join(self.content)


def tool_call_deltas(calls: list[dict[str, Any]], first: int) -> list[dict[str, Any]]:
    """Calls as streamed ``tool_calls`` deltas, each whole, indexed from
    ``first``."""
    return [{"index": first + offset, **call} for offset, call in enumerate(calls)]
