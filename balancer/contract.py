"""The typed contract between the web tier and the agents.

Framework-free.  A request is a kind and its params, built once at the edge
(the Paddler HTTP API, the inference socket, the OpenAI API) and sent to an
agent as JSON unchanged: these ``TypedDict``s are the JSON's shape, so the
agent reads them as they are.  The agent's output comes back as
``OutputItem``s; the readers here say what an item is (a token, the end of a
generation with its usage, an error, an embedding) so that no other module
picks Paddler's response shapes apart by hand.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, NotRequired, TypedDict, final

RequestKind = Literal["raw_prompt", "conversation", "embeddings"]
GenerationKind = Literal["raw_prompt", "conversation"]

# A chat message and a function tool, as clients send them: the chat template
# reads their keys, which vary with the template.
Message = dict[str, Any]
Tool = dict[str, Any]


class GbnfGrammar(TypedDict):
    type: Literal["gbnf"]
    grammar: str
    root: str


class JsonSchemaGrammar(TypedDict):
    type: Literal["json_schema"]
    # The schema as JSON text: the agent turns it into a grammar.
    schema: str


Grammar = GbnfGrammar | JsonSchemaGrammar


class NamedToolChoice(TypedDict):
    function: str


ToolChoice = Literal["auto", "required"] | NamedToolChoice


# Final: a union of them narrows on which keys it holds.
@final
class RawPromptParams(TypedDict):
    raw_prompt: str
    max_tokens: int
    grammar: Grammar | None
    # Sampling overrides: only the OpenAI API sets them, and only when given.
    temperature: NotRequired[float]
    top_p: NotRequired[float]
    seed: NotRequired[int]
    stop: NotRequired[list[str]]


@final
class ConversationParams(TypedDict):
    conversation_history: list[Message]
    add_generation_prompt: bool
    enable_thinking: bool
    max_tokens: int
    grammar: Grammar | None
    tools: list[Tool]
    temperature: NotRequired[float]
    top_p: NotRequired[float]
    seed: NotRequired[int]
    stop: NotRequired[list[str]]
    # Extra variables for the chat template (``reasoning_effort``, ...), and
    # ``documents``; only the OpenAI API sets them, and only when given.
    chat_template_kwargs: NotRequired[dict[str, Any]]
    # Tool calls (issue 15): "required" or a named function constrains the
    # output to a call; ``parse_tool_calls`` false leaves calls as content.
    tool_choice: NotRequired[ToolChoice]
    parse_tool_calls: NotRequired[bool]


class EmbeddingDocument(TypedDict):
    id: str
    content: str


class RmsNormEpsilon(TypedDict):
    epsilon: float


class RmsNorm(TypedDict):
    RmsNorm: RmsNormEpsilon


Normalization = Literal["L2", "None"] | RmsNorm


@final
class EmbeddingParams(TypedDict):
    input_batch: list[EmbeddingDocument]
    normalization_method: Normalization


GenerationParams = RawPromptParams | ConversationParams
RequestParams = RawPromptParams | ConversationParams | EmbeddingParams


class ItemError(TypedDict):
    code: int
    description: str


class Usage(TypedDict, total=False):
    """Token counts of a generation's ``Done`` (an embedding: prompt only)."""

    prompt_tokens: int
    cached_prompt_tokens: int
    input_image_tokens: int
    input_audio_tokens: int
    content_tokens: int
    reasoning_tokens: int
    tool_call_tokens: int
    undeterminable_tokens: int


class OutputItem(TypedDict):
    """One piece of a request's output, as the agent sends it back.

    ``response`` is the Paddler ``response`` payload (for instance
    ``{"GeneratedToken": {"ContentToken": "hi"}}``); ``error`` is an
    ``{"code", "description"}`` pair instead.  ``final`` marks the last item of
    a request, after which its slot is free again.  Read it with
    ``read_output``, not by hand.
    """

    request_id: str
    response: dict[str, Any] | str | None
    # An ``ItemError``; a plain dict while the agent builds it untyped.
    error: dict[str, Any] | None
    final: bool
    # For the web tier only, never sent to clients: e.g. {"slot": 1}.
    meta: dict[str, Any] | None


def error_item(request_id: str, code: int, description: str) -> OutputItem:
    """The final item of a request that ended with an error."""
    return {
        "request_id": request_id,
        "response": None,
        "error": {"code": code, "description": description},
        "final": True,
        "meta": None,
    }


def content_token_item(request_id: str, text: str) -> OutputItem:
    """A piece of a generation's answer, the bulk of all output."""
    return {
        "request_id": request_id,
        "response": {"GeneratedToken": {"ContentToken": text}},
        "error": None,
        "final": False,
        "meta": None,
    }


def embedding_done_item(request_id: str) -> OutputItem:
    """The final item of an embedding request whose documents all came."""
    return {
        "request_id": request_id,
        "response": {"Embedding": "Done"},
        "error": None,
        "final": True,
        "meta": None,
    }


# GeneratedToken variants that carry a piece of the answer; any other variant
# but Done ends the generation with an error (ChatTemplateError, ...).
TOKEN_VARIANTS = frozenset(
    {"ContentToken", "ReasoningToken", "ToolCallToken", "UndeterminableToken"}
)


@dataclass(frozen=True)
class Token:
    variant: str
    text: str


@dataclass(frozen=True)
class Done:
    usage: Usage


@dataclass(frozen=True)
class GenerationFailed:
    """A GeneratedToken variant that ends the generation instead of Done."""

    variant: str
    detail: str


@dataclass(frozen=True)
class Failure:
    """An error item: the request failed on its way or on the agent."""

    code: int
    description: str


@dataclass(frozen=True)
class DocumentEmbedding:
    source_document_id: str
    embedding: list[float]


@dataclass(frozen=True)
class DocumentFailed:
    """One document of a batch could not be embedded; the others go on."""

    description: str


@dataclass(frozen=True)
class EmbeddingDone:
    pass


@dataclass(frozen=True)
class Unreadable:
    """Output of no shape we know (or a progress item with nothing in it)."""

    response: object


# Reasoning and tool calls (issue 15): what a generation's tool-call
# results read as; their items and readers are at the end of this module.


class ParsedToolCallItem(TypedDict):
    """One call of a ``ToolCallParsed`` item, as Paddler writes it:
    ``arguments`` is ``{"ValidJson": value}`` or ``{"InvalidJson": text}``."""

    id: str
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class ToolCallsParsed:
    calls: list[ParsedToolCallItem]


@dataclass(frozen=True)
class ToolCallsUnparsed:
    """The model wrote tool-call text that could not be used as calls."""

    variant: str
    detail: str


Output = (
    Token
    | ToolCallsParsed
    | ToolCallsUnparsed
    | Done
    | GenerationFailed
    | Failure
    | DocumentEmbedding
    | DocumentFailed
    | EmbeddingDone
    | Unreadable
)


def content_token_text(item: OutputItem) -> str | None:
    """The text of a lone ContentToken, else None.

    The hot path (one item per token), so it allocates nothing.
    """
    response = item["response"]
    if item["error"] is None and isinstance(response, dict):
        generated = response.get("GeneratedToken")
        if isinstance(generated, dict) and len(generated) == 1:
            text = generated.get("ContentToken")
            if isinstance(text, str):
                return text
    return None


def _read_generated(generated: dict[str, Any]) -> Output:
    if "Done" in generated:
        payload = generated["Done"]
        usage: Usage = payload.get("usage", {}) if isinstance(payload, dict) else {}
        return Done(usage)
    if len(generated) != 1:
        return Unreadable({"GeneratedToken": generated})
    ((variant, payload),) = generated.items()
    if variant in TOKEN_VARIANTS:
        return Token(variant, str(payload))
    if variant in TOOL_CALL_RESULT_VARIANTS:
        return read_tool_call_result(variant, payload)
    return GenerationFailed(variant, str(payload))


def _read_embedding(payload: Any, response: dict[str, Any]) -> Output:
    if payload == "Done":
        return EmbeddingDone()
    if isinstance(payload, dict) and "Error" in payload:
        return DocumentFailed(str(payload["Error"]))
    embedding = payload.get("Embedding") if isinstance(payload, dict) else None
    if not isinstance(embedding, dict):
        return Unreadable(response)
    return DocumentEmbedding(
        str(embedding["source_document_id"]), list(embedding["embedding"])
    )


def read_output(item: OutputItem) -> Output:
    """What one output item is."""
    error = item["error"]
    if error is not None:
        return Failure(
            int(error.get("code", 500)),
            str(error.get("description", "inference failed")),
        )
    response = item["response"]
    if isinstance(response, dict):
        generated = response.get("GeneratedToken")
        if isinstance(generated, dict):
            return _read_generated(generated)
        if "Embedding" in response:
            return _read_embedding(response["Embedding"], response)
    return Unreadable(response)


def outcome_of(item: OutputItem) -> str:
    """How a request ended, from its final item: done, a status, or a variant."""
    output = read_output(item)
    if isinstance(output, Failure):
        return str(output.code)
    if isinstance(output, Done | EmbeddingDone):
        return "done"
    if isinstance(output, Token | GenerationFailed):
        return output.variant
    return "error"


# Reasoning and tool calls (issue 15): items of Paddler 4.x's protocol that
# split a generation into reasoning, tool-call text and parsed calls.


def reasoning_token_item(request_id: str, text: str) -> OutputItem:
    """A piece of the model's reasoning (a ``<think>`` block's text)."""
    return _generated(request_id, {"ReasoningToken": text})


def tool_call_token_item(request_id: str, text: str) -> OutputItem:
    """A piece of the text in which the model writes a tool call."""
    return _generated(request_id, {"ToolCallToken": text})


def tool_call_parsed_item(
    request_id: str, calls: list[ParsedToolCallItem]
) -> OutputItem:
    """The calls read from the generation's tool-call text (before Done)."""
    return _generated(request_id, {"ToolCallParsed": calls})


def tool_call_parse_failed_item(request_id: str, description: str) -> OutputItem:
    """The tool-call text held no call in the model's format."""
    return _generated(request_id, {"ToolCallParseFailed": description})


def tool_call_validation_failed_item(request_id: str, errors: list[str]) -> OutputItem:
    """Calls were read, but do not fit the tools offered."""
    return _generated(request_id, {"ToolCallValidationFailed": errors})


def _generated(request_id: str, payload: dict[str, Any]) -> OutputItem:
    return {
        "request_id": request_id,
        "response": {"GeneratedToken": payload},
        "error": None,
        "final": False,
        "meta": None,
    }


# GeneratedToken variants that report on a generation's tool calls: none
# ends it (Done follows).
TOOL_CALL_RESULT_VARIANTS = frozenset(
    {
        "ToolCallParsed",
        "ToolCallParseFailed",
        "ToolCallValidationFailed",
        "UnrecognizedToolCallFormat",
    }
)


def read_tool_call_result(variant: str, payload: Any) -> Output:
    if variant == "ToolCallParsed" and isinstance(payload, list):
        return ToolCallsParsed(payload)
    if isinstance(payload, list):
        return ToolCallsUnparsed(variant, "; ".join(str(p) for p in payload))
    return ToolCallsUnparsed(variant, str(payload))
