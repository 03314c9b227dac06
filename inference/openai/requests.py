"""OpenAI request bodies checked and translated into agent requests.

Framework-free.  Requests are checked field by field, and an unknown field is
refused as OpenAI refuses it ("Unrecognized request argument supplied"), so a
client never believes a setting took effect when it did not.  Fields we accept
but cannot act on (``n``, ``logprobs``, penalties, ...) are accepted only with
their neutral value.  ``response_format`` becomes an agent grammar and
``tools`` reach the chat template.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from balancer.chat_template import RESERVED_VARIABLES
from balancer.contract import (
    ConversationParams,
    EmbeddingParams,
    GenerationKind,
    Grammar,
    Message,
    RawPromptParams,
    Tool,
    ToolChoice,
)
from balancer.grammar_limits import GrammarTooComplex, check_json_schema_text
from inference.openai.errors import OpenAIError, invalid
from inference.validation import (
    MAX_TOKENS_LIMIT,
    InvalidRequest,
    content_parts,
    validate_tools,
)

# OpenAI's own limits.
MAX_STOP_SEQUENCES = 4
MAX_EMBEDDING_INPUTS = 2048
# OpenAI's default for /v1/completions; chat completions have none (the
# slot's context is then the limit).
COMPLETION_DEFAULT_MAX_TOKENS = 16

# Any JSON object (llama.cpp's json.gbnf, rooted at an object), for
# ``response_format: {"type": "json_object"}``.  Whitespace is bounded so that a
# small model cannot pad forever.
JSON_OBJECT_GBNF = r"""
root     ::= object
value    ::= object | array | string | number | ("true" | "false" | "null") ws
object   ::= "{" ws ( string ":" ws value ("," ws string ":" ws value)* )? "}" ws
array    ::= "[" ws ( value ("," ws value)* )? "]" ws
string   ::= "\"" char* "\"" ws
char     ::= [^"\\\x7F\x00-\x1F] | "\\" (["\\bfnrt/] | "u" [0-9a-fA-F]{4})
number   ::= integer fraction? exponent? ws
integer  ::= "-"? ("0" | [1-9] [0-9]{0,15})
fraction ::= "." [0-9]{1,16}
exponent ::= [eE] [-+]? [0-9]{1,3}
ws       ::= | " " | "\n" [ \t]{0,20}
""".strip()


P = TypeVar("P", RawPromptParams, ConversationParams)


@dataclass(frozen=True)
class GenerationRequest(Generic[P]):
    """A chat or text completion, translated for the agents."""

    model: str
    kind: GenerationKind
    params: P
    max_tokens: int
    stream: bool
    include_usage: bool


AnyGeneration = (
    GenerationRequest[RawPromptParams] | GenerationRequest[ConversationParams]
)


@dataclass(frozen=True)
class EmbeddingRequest:
    model: str
    params: EmbeddingParams
    count: int
    encoding_format: str


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise OpenAIError(400, "The request body must be a JSON object.")
    return body


def _reject_unknown(body: dict[str, Any], known: frozenset[str]) -> None:
    for name in body:
        if name not in known:
            raise OpenAIError(
                400,
                f"Unrecognized request argument supplied: {name}",
                param=name,
                code="unknown_parameter",
            )


def _model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise invalid("model", "is required and must be a non-empty string")
    return model


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _number(body: dict[str, Any], name: str, low: float, high: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if not _is_number(value) or not low <= value <= high:
        raise invalid(name, f"must be a number between {low:g} and {high:g}")
    return float(value)


def _integer(body: dict[str, Any], name: str, low: int, high: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid(name, "must be an integer")
    if not low <= value <= high:
        raise invalid(name, f"must be between {low} and {high}")
    return value


def _boolean(body: dict[str, Any], name: str) -> bool:
    value = body.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise invalid(name, "must be true or false")
    return value


def _neutral(body: dict[str, Any], name: str, *neutral: Any) -> None:
    """Accept ``name`` only with a value that asks for nothing we cannot do."""
    value = body.get(name)
    if value is None or any(value == n and type(value) is type(n) for n in neutral):
        return
    accepted = " or ".join(["null", *(json.dumps(n) for n in neutral)])
    raise invalid(name, f"is not supported here; only {accepted} is accepted")


def _stop(value: Any) -> list[str]:
    if value is None:
        return []
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise invalid("stop", "must be a string or a list of strings")
    if len(stops) > MAX_STOP_SEQUENCES:
        raise invalid("stop", f"must hold at most {MAX_STOP_SEQUENCES} sequences")
    if any(not s for s in stops):
        raise invalid("stop", "must not contain an empty string")
    return list(stops)


def _stream_options(body: dict[str, Any], stream: bool) -> bool:
    """Whether the stream ends with a usage chunk."""
    options = body.get("stream_options")
    if options is None:
        return False
    if not stream:
        raise invalid("stream_options", "is only allowed when stream is true")
    if not isinstance(options, dict):
        raise invalid("stream_options", "must be an object")
    for name in options:
        if name not in ("include_usage", "include_obfuscation"):
            raise invalid(f"stream_options.{name}", "unknown field")
    include = options.get("include_usage", False)
    if not isinstance(include, bool):
        raise invalid("stream_options.include_usage", "must be true or false")
    return include


def response_format_grammar(value: Any) -> Grammar | None:
    """The agent grammar that enforces an OpenAI ``response_format``."""
    if value is None:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("type"), str):
        raise invalid("response_format", "must be an object with a type")
    kind = value["type"]
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "gbnf", "grammar": JSON_OBJECT_GBNF, "root": "root"}
    if kind == "json_schema":
        spec = value.get("json_schema")
        if not isinstance(spec, dict):
            raise invalid("response_format.json_schema", "must be an object")
        name = spec.get("name")
        if not isinstance(name, str) or not name:
            raise invalid(
                "response_format.json_schema.name", "must be a non-empty string"
            )
        schema = spec.get("schema", {})
        if not isinstance(schema, dict):
            raise invalid("response_format.json_schema.schema", "must be an object")
        # The agent turns the schema into a grammar; "strict" changes nothing,
        # output that follows the grammar always follows the schema.
        try:
            text = json.dumps(schema)
            check_json_schema_text(text)
        except RecursionError:
            raise invalid(
                "response_format.json_schema.schema", "is nested too deeply"
            ) from None
        except GrammarTooComplex as error:
            raise invalid("response_format.json_schema.schema", str(error)) from None
        return {"type": "json_schema", "schema": text}
    raise invalid(
        "response_format.type", 'must be "text", "json_object" or "json_schema"'
    )


def _sampling(body: dict[str, Any], params: P) -> P:
    """``params`` with the sampling fields the agents honour, when given."""
    temperature = _number(body, "temperature", 0.0, 2.0)
    if temperature is not None:
        params["temperature"] = temperature
    top_p = _number(body, "top_p", 0.0, 1.0)
    if top_p is not None:
        params["top_p"] = top_p
    seed = _integer(body, "seed", -(2**63), 2**63 - 1)
    if seed is not None:
        params["seed"] = seed
    stops = _stop(body.get("stop"))
    if stops:
        params["stop"] = stops
    return params


def _unsupported_defaults(body: dict[str, Any]) -> None:
    _neutral(body, "n", 1)
    _neutral(body, "logprobs", False)
    _neutral(body, "frequency_penalty", 0, 0.0)
    _neutral(body, "presence_penalty", 0, 0.0)
    _neutral(body, "logit_bias", {})


CHAT_FIELDS = frozenset(
    {
        "model",
        "messages",
        "stream",
        "stream_options",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "stop",
        "seed",
        "response_format",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "chat_template_kwargs",
        "n",
        "logprobs",
        "top_logprobs",
        "frequency_penalty",
        "presence_penalty",
        "logit_bias",
        "user",
        "metadata",
        "store",
    }
)
CHAT_ROLES = ("system", "developer", "user", "assistant", "tool")
# Keys a client echoes back from our own assistant messages; meaningless here.
_ECHOED_MESSAGE_KEYS = frozenset({"refusal", "annotations", "audio", "function_call"})


def _content(where: str, role: str, value: Any) -> str | list[dict[str, Any]]:
    if isinstance(value, str):
        return value
    if value is None and role in ("assistant", "tool"):
        return ""
    if not isinstance(value, list):
        raise invalid(where, "must be a string or a list of content parts")
    try:
        # Text and image_url parts (``detail`` accepted and ignored).
        return content_parts(where, value)
    except InvalidRequest as error:
        raise invalid(error.field, error.message) from None


def _chat_message(index: int, value: Any) -> Message:
    where = f"messages[{index}]"
    if not isinstance(value, dict):
        raise invalid(where, "must be an object")
    role = value.get("role")
    if role not in CHAT_ROLES:
        raise invalid(f"{where}.role", f"must be one of {', '.join(CHAT_ROLES)}")
    message: Message = {
        # Chat templates know "system"; "developer" is OpenAI's newer name.
        "role": "system" if role == "developer" else role,
        "content": _content(f"{where}.content", role, value.get("content")),
    }
    for name, item in value.items():
        if name in ("role", "content") or name in _ECHOED_MESSAGE_KEYS:
            continue
        if name in ("name", "tool_call_id"):
            if not isinstance(item, str):
                raise invalid(f"{where}.{name}", "must be a string")
        elif name == "tool_calls":
            if not isinstance(item, list) or not all(isinstance(c, dict) for c in item):
                raise invalid(f"{where}.tool_calls", "must be a list of objects")
        else:
            raise invalid(f"{where}.{name}", "unknown field")
        # Templates that render tool calls read these as OpenAI names them.
        message[name] = item
    return message


def _tools(body: dict[str, Any]) -> tuple[list[Tool], ToolChoice]:
    """The tools offered, and how a call is asked for: "auto" (the model
    may call one), "required" or a named function (the agent constrains the
    output to a call with a grammar)."""
    try:
        tools = validate_tools(body.get("tools"))
    except InvalidRequest as error:
        raise invalid(error.field, error.message) from None
    choice = body.get("tool_choice")
    if choice in (None, "auto"):
        return tools, "auto"
    if choice == "none":
        # The model must not call a tool, so it is not told about any.
        return [], "auto"
    if not tools:
        raise invalid("tool_choice", "needs tools to choose from")
    if choice == "required":
        return tools, "required"
    function = choice.get("function") if isinstance(choice, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(choice, dict) or choice.get("type") != "function":
        raise invalid(
            "tool_choice",
            'must be "none", "auto", "required" or '
            '{"type": "function", "function": {"name": ...}}',
        )
    if name not in {tool["function"]["name"] for tool in tools}:
        raise invalid("tool_choice.function.name", f"names no tool offered: {name!r}")
    return tools, {"function": str(name)}


def _chat_template_kwargs(body: dict[str, Any]) -> dict[str, Any]:
    """llama-server's extension: extra variables for the chat template
    (``enable_thinking``, ``reasoning_effort``, ``documents``, ...)."""
    value = body.get("chat_template_kwargs")
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise invalid("chat_template_kwargs", "must be an object")
    for name in value:
        if not name.isidentifier():
            raise invalid(
                f"chat_template_kwargs.{name}", "is not a template variable name"
            )
        if name in RESERVED_VARIABLES - {"documents"}:
            raise invalid(
                f"chat_template_kwargs.{name}", "is set by the request itself"
            )
    documents = value.get("documents")
    if documents is not None and not (
        isinstance(documents, list) and all(isinstance(d, dict) for d in documents)
    ):
        raise invalid("chat_template_kwargs.documents", "must be a list of objects")
    thinking = value.get("enable_thinking")
    if thinking is not None and not isinstance(thinking, bool):
        raise invalid("chat_template_kwargs.enable_thinking", "must be true or false")
    return dict(value)


def _max_tokens(body: dict[str, Any], *names: str) -> int | None:
    for name in names:
        value = _integer(body, name, 1, MAX_TOKENS_LIMIT)
        if value is not None:
            return value
    return None


def parse_chat_request(body: Any) -> GenerationRequest[ConversationParams]:
    body = _object(body)
    _reject_unknown(body, CHAT_FIELDS)
    model = _model(body)
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise invalid("messages", "is required and must be a list of messages")
    if not messages:
        raise invalid("messages", "must not be empty")
    history = [_chat_message(i, m) for i, m in enumerate(messages)]
    _unsupported_defaults(body)
    _neutral(body, "top_logprobs", 0)
    stream = _boolean(body, "stream")
    max_tokens = (
        _max_tokens(body, "max_completion_tokens", "max_tokens") or MAX_TOKENS_LIMIT
    )
    kwargs = _chat_template_kwargs(body)
    tools, tool_choice = _tools(body)
    params: ConversationParams = {
        "conversation_history": history,
        "add_generation_prompt": True,
        # Off unless asked for: the answer comes without a reasoning detour.
        "enable_thinking": bool(kwargs.pop("enable_thinking", False)),
        "max_tokens": max_tokens,
        "grammar": response_format_grammar(body.get("response_format")),
        "tools": tools,
    }
    if kwargs:
        params["chat_template_kwargs"] = kwargs
    if tool_choice != "auto":
        params["tool_choice"] = tool_choice
    return GenerationRequest(
        model=model,
        kind="conversation",
        params=_sampling(body, params),
        max_tokens=max_tokens,
        stream=stream,
        include_usage=_stream_options(body, stream),
    )


COMPLETION_FIELDS = frozenset(
    {
        "model",
        "prompt",
        "stream",
        "stream_options",
        "max_tokens",
        "temperature",
        "top_p",
        "stop",
        "seed",
        "n",
        "best_of",
        "echo",
        "suffix",
        "logprobs",
        "frequency_penalty",
        "presence_penalty",
        "logit_bias",
        "user",
    }
)


def parse_completion_request(body: Any) -> GenerationRequest[RawPromptParams]:
    body = _object(body)
    _reject_unknown(body, COMPLETION_FIELDS)
    model = _model(body)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if isinstance(prompt, list):
        raise invalid("prompt", "must be a single string; send one prompt a request")
    if not isinstance(prompt, str):
        raise invalid("prompt", "is required and must be a string")
    if not prompt:
        raise invalid("prompt", "must not be empty")
    _unsupported_defaults(body)
    _neutral(body, "best_of", 1)
    _neutral(body, "echo", False)
    _neutral(body, "suffix", "")
    stream = _boolean(body, "stream")
    max_tokens = _max_tokens(body, "max_tokens") or COMPLETION_DEFAULT_MAX_TOKENS
    params: RawPromptParams = {
        "raw_prompt": prompt,
        "max_tokens": max_tokens,
        "grammar": None,
    }
    return GenerationRequest(
        model=model,
        kind="raw_prompt",
        params=_sampling(body, params),
        max_tokens=max_tokens,
        stream=stream,
        include_usage=_stream_options(body, stream),
    )


EMBEDDING_FIELDS = frozenset(
    {"model", "input", "encoding_format", "dimensions", "user"}
)


def parse_embedding_request(body: Any) -> EmbeddingRequest:
    """Embeddings come back L2-normalized: OpenAI's are unit length, and
    clients compare them with a plain dot product."""
    body = _object(body)
    _reject_unknown(body, EMBEDDING_FIELDS)
    model = _model(body)
    value = body.get("input")
    inputs = [value] if isinstance(value, str) else value
    if not isinstance(inputs, list) or not inputs:
        raise invalid("input", "is required: a string or a non-empty list of strings")
    if len(inputs) > MAX_EMBEDDING_INPUTS:
        raise invalid("input", f"must hold at most {MAX_EMBEDDING_INPUTS} strings")
    for index, text in enumerate(inputs):
        if not isinstance(text, str):
            raise invalid(
                "input", f"[{index}] must be a string; token arrays are not supported"
            )
        if not text:
            raise invalid("input", f"[{index}] must not be empty")
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise invalid("encoding_format", 'must be "float" or "base64"')
    _neutral(body, "dimensions")
    return EmbeddingRequest(
        model=model,
        params={
            "input_batch": [
                {"id": str(index), "content": text} for index, text in enumerate(inputs)
            ],
            "normalization_method": "L2",
        },
        count=len(inputs),
        encoding_format=encoding,
    )
