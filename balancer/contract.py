"""The typed contract between the web tier and the agents.

Framework-free.  A request is a kind and its params, built once at the edge
(the Paddler HTTP API, the inference socket, the OpenAI API) and sent to an
agent as JSON unchanged: these ``TypedDict``s are the JSON's shape, so the
agent reads them as they are.  The agent's output comes back as
``OutputItem``s in Paddler's response shapes: each kind of output is a typed
value (a token, the end of a generation with its usage, a generation error,
an error item, an embedding, progress), the agent builds items only with the
constructors here (``output_item`` is the one conversion of a value to its
item), and the web tier reads them only with ``read_output``, so that no other
module builds or picks Paddler's response shapes apart by hand.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import (
    Any,
    Literal,
    NotRequired,
    TypedDict,
    TypeGuard,
    assert_never,
    cast,
    final,
    get_args,
)

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


# The prompt part of a generation's params, all that routing hashes: the agent
# keeps only this of a request (``agents.jobs.Generation.prefix_params``); the
# web tier hands routing the whole params, of which it reads the same key.
@final
class RawPromptPrefix(TypedDict):
    raw_prompt: str


@final
class ConversationPrefix(TypedDict):
    conversation_history: list[Message]


PromptPrefix = RawPromptPrefix | ConversationPrefix
# What routing reads: a request's params (a generation's are a
# ``PromptPrefix`` with more keys, and mypy sees them so) or the agent's
# prompt part of them.  Spelt flat: mypy 2.4 narrows a union of union aliases
# wrongly on ``in``.
PromptParams = RawPromptPrefix | ConversationPrefix | EmbeddingParams


class SlotReport(TypedDict):
    """One slot in an agent's status report, which routing reads: whether it
    is busy, and the prefix hashes of what its KV cache holds."""

    busy: bool
    prefix: list[str]


# Output: what the agent sends back for a request, item by item.  Each kind of
# output is a typed value (``Token``, ``Done``, ``GenerationFailed``, ...);
# ``output_item`` is the one conversion of a value to the ``OutputItem`` the
# agent sends, in Paddler's wire shape, and ``read_output`` the one reading
# back.  The agents build items only through the constructors below.


class ItemError(TypedDict):
    """Why a request failed: an HTTP status and a description."""

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


# GeneratedToken variants that carry a piece of the answer.
TokenKind = Literal[
    "ContentToken", "ReasoningToken", "ToolCallToken", "UndeterminableToken"
]
TOKEN_VARIANTS: frozenset[str] = frozenset(get_args(TokenKind))

# GeneratedToken variants that end a generation instead of ``Done`` (Paddler's
# ``GeneratedTokenResult``), each with a string payload.
GenerationErrorKind = Literal[
    "ChatTemplateError",
    "GrammarIncompatibleWithThinking",
    "GrammarInitializationFailed",
    "GrammarRejectedModelOutput",
    "GrammarSyntaxError",
    "ImageDecodingFailed",
    "MultimodalNotSupported",
    "SamplerError",
    "ToolCallValidatorBuildFailed",
]
GENERATION_ERROR_VARIANTS: frozenset[str] = frozenset(get_args(GenerationErrorKind))


class DonePayload(TypedDict):
    usage: Usage


class GeneratedToken(TypedDict, total=False):
    """Paddler's ``GeneratedTokenResult``, a serde enum: exactly one key."""

    ContentToken: str
    ReasoningToken: str
    ToolCallToken: str
    UndeterminableToken: str
    Done: DonePayload
    ChatTemplateError: str
    GrammarIncompatibleWithThinking: str
    GrammarInitializationFailed: str
    GrammarRejectedModelOutput: str
    GrammarSyntaxError: str
    ImageDecodingFailed: str
    MultimodalNotSupported: str
    SamplerError: str
    ToolCallValidatorBuildFailed: str
    ToolCallParsed: list[ParsedToolCallItem]
    ToolCallParseFailed: str
    ToolCallValidationFailed: list[str]
    UnrecognizedToolCallFormat: str


@final
class GeneratedTokenResponse(TypedDict):
    GeneratedToken: GeneratedToken


class EmbeddingVector(TypedDict):
    embedding: list[float]
    normalization_method: Normalization
    pooling_type: str
    source_document_id: str


class EmbeddingResult(TypedDict, total=False):
    """Paddler's ``EmbeddingResult`` but its unit ``"Done"``: exactly one key."""

    Embedding: EmbeddingVector
    # One document could not be embedded; the others go on.
    Error: str


@final
class EmbeddingResponse(TypedDict):
    Embedding: EmbeddingResult | Literal["Done"]


# The Paddler ``response`` payload of an item.
Response = GeneratedTokenResponse | EmbeddingResponse


class ItemMeta(TypedDict, total=False):
    """What an item tells the web tier only, never sent to clients."""

    # The slot serving the request (its first token, its Done): the request
    # log names it even when the request is cancelled.
    slot: int
    # Progress through a long prompt, before its first token.
    evaluated_prompt_tokens: int
    # The tokens an embedding request read, on its Done.
    prompt_tokens: int


class OutputItem(TypedDict):
    """One piece of a request's output, as the agent sends it back.

    ``response`` is the Paddler ``response`` payload (for instance
    ``{"GeneratedToken": {"ContentToken": "hi"}}``); ``error`` an
    ``ItemError`` instead.  ``final`` marks the last item of a request, after
    which its slot is free again.  Build it with the constructors below and
    read it with ``read_output``, not by hand.
    """

    request_id: str
    response: Response | None
    error: ItemError | None
    final: bool
    meta: ItemMeta | None


@dataclass(frozen=True)
class Token:
    variant: TokenKind
    text: str


@dataclass(frozen=True)
class Done:
    usage: Usage


@dataclass(frozen=True)
class GenerationFailed:
    """A GeneratedToken variant that ends the generation instead of Done."""

    variant: GenerationErrorKind
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
    normalization_method: Normalization
    pooling_type: str


@dataclass(frozen=True)
class DocumentFailed:
    """One document of a batch could not be embedded; the others go on."""

    description: str


@dataclass(frozen=True)
class EmbeddingDone:
    pass


@dataclass(frozen=True)
class Progress:
    """A long prompt is being evaluated: the request is alive, nothing to
    send to the client yet."""

    evaluated_prompt_tokens: int


@dataclass(frozen=True)
class Unreadable:
    """Output of no shape we know (or an item with nothing in it)."""

    response: object


# Reasoning and tool calls (issue 15): the calls read from a generation's
# tool-call text, or why none could be.


class ParsedToolCallItem(TypedDict):
    """One call of a ``ToolCallParsed`` item, as Paddler writes it:
    ``arguments`` is ``{"ValidJson": value}`` or ``{"InvalidJson": text}``."""

    id: str
    name: str
    arguments: dict[str, Any]


# GeneratedToken variants that report on a generation's tool calls: none
# ends it (Done follows).
ToolCallFailureKind = Literal[
    "ToolCallParseFailed", "ToolCallValidationFailed", "UnrecognizedToolCallFormat"
]
TOOL_CALL_RESULT_VARIANTS: frozenset[str] = frozenset(
    {"ToolCallParsed", *get_args(ToolCallFailureKind)}
)


@dataclass(frozen=True)
class ToolCallsParsed:
    calls: list[ParsedToolCallItem]


@dataclass(frozen=True)
class ToolCallsUnparsed:
    """The model wrote tool-call text that could not be used as calls.

    ``errors`` lists each problem; on the wire ``ToolCallValidationFailed``
    carries the list, the other variants one text (``detail``)."""

    variant: ToolCallFailureKind
    detail: str
    errors: tuple[str, ...] = ()


# What an agent sends; ``Unreadable`` is only ever read.
Sendable = (
    Token
    | ToolCallsParsed
    | ToolCallsUnparsed
    | Done
    | GenerationFailed
    | Failure
    | DocumentEmbedding
    | DocumentFailed
    | EmbeddingDone
    | Progress
)
Output = Sendable | Unreadable


def output_item(
    request_id: str, output: Sendable, meta: ItemMeta | None = None
) -> OutputItem:
    """The item that carries ``output``: the one conversion to the wire shape.

    Whether the item is its request's last follows from what it is: a
    generation's end (``Done`` or a failed variant), an error, an embedding
    batch's ``Done``.
    """
    response: Response | None = None
    error: ItemError | None = None
    final = True
    match output:
        case Token(variant, text):
            token: GeneratedToken = {}
            token[variant] = text
            response = {"GeneratedToken": token}
            final = False
        case Done(usage):
            response = {"GeneratedToken": {"Done": {"usage": usage}}}
        case GenerationFailed(variant, detail):
            failed: GeneratedToken = {}
            failed[variant] = detail
            response = {"GeneratedToken": failed}
        case Failure(code, description):
            error = {"code": code, "description": description}
        case DocumentEmbedding(document_id, embedding, normalization, pooling):
            vector: EmbeddingVector = {
                "embedding": embedding,
                "normalization_method": normalization,
                "pooling_type": pooling,
                "source_document_id": document_id,
            }
            response = {"Embedding": {"Embedding": vector}}
            final = False
        case DocumentFailed(description):
            response = {"Embedding": {"Error": description}}
            final = False
        case EmbeddingDone():
            response = {"Embedding": "Done"}
        case ToolCallsParsed(calls):
            response = {"GeneratedToken": {"ToolCallParsed": calls}}
            final = False
        case ToolCallsUnparsed("ToolCallValidationFailed", _, errors):
            response = {"GeneratedToken": {"ToolCallValidationFailed": list(errors)}}
            final = False
        case ToolCallsUnparsed(variant, detail, _):
            unparsed: GeneratedToken = {}
            unparsed[variant] = detail
            response = {"GeneratedToken": unparsed}
            final = False
        case Progress(evaluated):
            # Nothing for the client: the count rides in the meta.
            meta = {**(meta or {}), "evaluated_prompt_tokens": evaluated}
            final = False
        case _:
            assert_never(output)
    return {
        "request_id": request_id,
        "response": response,
        "error": error,
        "final": final,
        "meta": meta,
    }


def error_item(request_id: str, code: int, description: str) -> OutputItem:
    """The final item of a request that ended with an error."""
    return output_item(request_id, Failure(code, description))


def content_token_item(
    request_id: str, text: str, *, slot: int | None = None
) -> OutputItem:
    """A piece of a generation's answer, the bulk of all output.

    Built here by hand, not through ``output_item``: it is the hot path (one
    item per token), and ``tests/test_contract.py`` holds it to the same shape.
    ``slot``: the slot serving the request, told once, on its first token.
    """
    return {
        "request_id": request_id,
        "response": {"GeneratedToken": {"ContentToken": text}},
        "error": None,
        "final": False,
        "meta": None if slot is None else {"slot": slot},
    }


def done_item(request_id: str, usage: Usage, *, slot: int | None = None) -> OutputItem:
    """The final item of a generation that ended well, with its token counts."""
    return output_item(
        request_id, Done(usage), None if slot is None else {"slot": slot}
    )


def generation_failed_item(
    request_id: str, variant: GenerationErrorKind, detail: str
) -> OutputItem:
    """The final item of a generation that ended with a GeneratedToken error
    (``ChatTemplateError``, ``GrammarSyntaxError``, ...)."""
    return output_item(request_id, GenerationFailed(variant, detail))


def document_embedding_item(
    request_id: str,
    *,
    source_document_id: str,
    embedding: list[float],
    normalization_method: Normalization,
    pooling_type: str,
) -> OutputItem:
    """One document's vector."""
    return output_item(
        request_id,
        DocumentEmbedding(
            source_document_id, embedding, normalization_method, pooling_type
        ),
    )


def document_failed_item(request_id: str, description: str) -> OutputItem:
    """One document of a batch that could not be embedded."""
    return output_item(request_id, DocumentFailed(description))


def embedding_done_item(
    request_id: str, *, prompt_tokens: int | None = None
) -> OutputItem:
    """The final item of an embedding request whose documents all came;
    ``prompt_tokens`` (the tokens read) is for usage figures and the log."""
    meta: ItemMeta | None = None
    if prompt_tokens is not None:
        meta = {"prompt_tokens": prompt_tokens}
    return output_item(request_id, EmbeddingDone(), meta)


def progress_item(request_id: str, evaluated_prompt_tokens: int) -> OutputItem:
    """A long prompt is being evaluated: tells the web tier the request is
    alive (it is not forwarded to the client)."""
    return output_item(request_id, Progress(evaluated_prompt_tokens))


def _is_token(variant: str) -> TypeGuard[TokenKind]:
    return variant in TOKEN_VARIANTS


def _is_generation_error(variant: str) -> TypeGuard[GenerationErrorKind]:
    return variant in GENERATION_ERROR_VARIANTS


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


def carries_nothing(item: OutputItem) -> bool:
    """Whether ``item`` has nothing for the client (progress on a long
    prompt): cheaper than ``read_output``, for every item of a stream."""
    return item["response"] is None and item["error"] is None


def _read_generated(generated: GeneratedToken, response: Response) -> Output:
    if "Done" in generated:
        done: object = generated["Done"]
        # Read leniently: the item came as JSON from another process.
        usage: Usage = done.get("usage", {}) if isinstance(done, dict) else {}
        return Done(usage)
    if len(generated) != 1:
        return Unreadable(response)
    ((variant, payload),) = generated.items()
    if _is_token(variant):
        return Token(variant, str(payload))
    if variant in TOOL_CALL_RESULT_VARIANTS:
        return read_tool_call_result(variant, generated[variant])  # type: ignore[literal-required]
    if _is_generation_error(variant):
        return GenerationFailed(variant, str(payload))
    return Unreadable(response)


def _read_embedding(
    result: EmbeddingResult | Literal["Done"], response: Response
) -> Output:
    if result == "Done":
        return EmbeddingDone()
    if not isinstance(result, dict):
        return Unreadable(response)
    if "Error" in result:
        return DocumentFailed(str(result["Error"]))
    vector = result.get("Embedding")
    if not isinstance(vector, dict):
        return Unreadable(response)
    return DocumentEmbedding(
        str(vector["source_document_id"]),
        list(vector["embedding"]),
        vector.get("normalization_method", "None"),
        str(vector.get("pooling_type", "")),
    )


def read_output(item: OutputItem) -> Output:
    """What one output item is: the one reading of the wire shape."""
    error = item["error"]
    if error is not None:
        # Read leniently: the item came as JSON from another process.
        return Failure(
            int(error.get("code", 500)),
            str(error.get("description", "inference failed")),
        )
    response = item["response"]
    if response is None:
        meta = item["meta"]
        if meta is not None and "evaluated_prompt_tokens" in meta:
            return Progress(meta["evaluated_prompt_tokens"])
        return Unreadable(None)
    if isinstance(response, dict):
        if "GeneratedToken" in response:
            generated = response["GeneratedToken"]
            if isinstance(generated, dict):
                return _read_generated(generated, response)
        elif "Embedding" in response:
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
    return output_item(request_id, Token("ReasoningToken", text))


def tool_call_token_item(request_id: str, text: str) -> OutputItem:
    """A piece of the text in which the model writes a tool call."""
    return output_item(request_id, Token("ToolCallToken", text))


def tool_call_parsed_item(
    request_id: str, calls: list[ParsedToolCallItem]
) -> OutputItem:
    """The calls read from the generation's tool-call text (before Done)."""
    return output_item(request_id, ToolCallsParsed(calls))


def tool_call_parse_failed_item(request_id: str, description: str) -> OutputItem:
    """The tool-call text held no call in the model's format."""
    return output_item(
        request_id, ToolCallsUnparsed("ToolCallParseFailed", description)
    )


def tool_call_validation_failed_item(request_id: str, errors: list[str]) -> OutputItem:
    """Calls were read, but do not fit the tools offered."""
    return output_item(
        request_id,
        ToolCallsUnparsed("ToolCallValidationFailed", "; ".join(errors), tuple(errors)),
    )


def read_tool_call_result(variant: str, payload: object) -> Output:
    if variant == "ToolCallParsed" and isinstance(payload, list):
        return ToolCallsParsed(payload)
    if variant not in TOOL_CALL_RESULT_VARIANTS or variant == "ToolCallParsed":
        return Unreadable({"GeneratedToken": {variant: payload}})
    kind = cast(ToolCallFailureKind, variant)
    if isinstance(payload, list):
        errors = tuple(str(p) for p in payload)
        return ToolCallsUnparsed(kind, "; ".join(errors), errors)
    return ToolCallsUnparsed(kind, str(payload))
