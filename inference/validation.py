"""Validation of inference request bodies, before any slot is taken.

Framework-free.  Every rejection names the field, so a client can fix its call.
"""

from __future__ import annotations

from typing import Any

from balancer.contract import (
    ConversationParams,
    EmbeddingDocument,
    EmbeddingParams,
    Grammar,
    Message,
    Normalization,
    RawPromptParams,
    Tool,
)
from balancer.grammar_limits import (
    GrammarTooComplex,
    check_gbnf,
    check_json_schema_text,
)

MAX_TOKENS_LIMIT = 1_000_000
ROLES = ("system", "user", "assistant", "tool")


class InvalidRequest(ValueError):
    # The HTTP status it is answered with.
    status = 400

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class ImageTooLarge(InvalidRequest):
    """An image, or a request's images together, over an operator's limit."""

    status = 413


# What an image part's ``detail`` may say (OpenAI's values).  It is accepted
# and ignored: the agent scales every image to the desired state's
# ``image_resize_to_fit``.
IMAGE_DETAILS = ("auto", "low", "high")
# How an error names a key that is the empty string.
EMPTY_KEY = '""'


def image_part(where: str, part: dict[str, Any]) -> dict[str, Any]:
    """An ``image_url`` part, checked for shape only: ``{"type": "image_url",
    "image_url": {"url": str, "detail"?: str}}``.

    Its URL is read later (``inference.image_parts``): a ``data:`` URL is
    decoded and an http(s) one fetched, each within the operator's limits.
    """
    for key in part:
        if key not in ("type", "image_url"):
            raise InvalidRequest(f"{where}.{key or EMPTY_KEY}", "unknown field")
    image = part.get("image_url")
    if not isinstance(image, dict):
        raise InvalidRequest(
            f"{where}.image_url", 'is required and must be an object {"url": ...}'
        )
    for key in image:
        if key not in ("url", "detail"):
            raise InvalidRequest(
                f"{where}.image_url.{key or EMPTY_KEY}", "unknown field"
            )
    if not isinstance(image.get("url"), str) or not image["url"]:
        raise InvalidRequest(
            f"{where}.image_url.url",
            "is required: a data: URL (data:image/png;base64,...) or an http(s) URL",
        )
    if "detail" in image and image["detail"] not in IMAGE_DETAILS:
        raise InvalidRequest(
            f"{where}.image_url.detail", f"must be one of {', '.join(IMAGE_DETAILS)}"
        )
    return {"type": "image_url", "image_url": {"url": image["url"]}}


def content_parts(where: str, value: list[Any]) -> list[dict[str, Any]]:
    """A message's content parts: text and images, nothing else (a part we
    could not pass on would be dropped without a word)."""
    parts: list[dict[str, Any]] = []
    for index, part in enumerate(value):
        at = f"{where}[{index}]"
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise InvalidRequest(at, "must be a typed content part")
        if part["type"] == "text":
            if not isinstance(part.get("text"), str):
                raise InvalidRequest(f"{at}.text", "must be a string")
            parts.append({"type": "text", "text": part["text"]})
        elif part["type"] == "image_url":
            parts.append(image_part(at, part))
        else:
            raise InvalidRequest(f"{at}.type", 'must be "text" or "image_url"')
    return parts


def _require_keys(body: Any, allowed: set[str], required: set[str]) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise InvalidRequest("body", "must be a JSON object")
    for key in body:
        if key not in allowed:
            raise InvalidRequest(key or '""', "unknown field")
    for key in sorted(required):
        if key not in body:
            raise InvalidRequest(key, "is required")
    return body


def _max_tokens(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest("max_tokens", "must be an integer")
    if not 1 <= value <= MAX_TOKENS_LIMIT:
        raise InvalidRequest("max_tokens", f"must be between 1 and {MAX_TOKENS_LIMIT}")
    return value


def validate_grammar(value: Any) -> Grammar | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidRequest("grammar", "must be an object")
    kind = value.get("type")
    if kind == "gbnf":
        _require_keys(value, {"type", "grammar", "root"}, {"grammar"})
        if not isinstance(value["grammar"], str) or not value["grammar"].strip():
            raise InvalidRequest("grammar.grammar", "must be a non-empty string")
        root = value.get("root", "root")
        if not isinstance(root, str) or not root:
            raise InvalidRequest("grammar.root", "must be a rule name")
        try:
            check_gbnf(value["grammar"])
        except GrammarTooComplex as error:
            raise InvalidRequest("grammar.grammar", str(error)) from None
        return {"type": "gbnf", "grammar": value["grammar"], "root": root}
    if kind == "json_schema":
        _require_keys(value, {"type", "schema"}, {"schema"})
        if not isinstance(value["schema"], str):
            raise InvalidRequest(
                "grammar.schema", "must be the schema as a JSON string"
            )
        try:
            check_json_schema_text(value["schema"])
        except GrammarTooComplex as error:
            raise InvalidRequest("grammar.schema", str(error)) from None
        return {"type": "json_schema", "schema": value["schema"]}
    raise InvalidRequest("grammar.type", 'must be "gbnf" or "json_schema"')


def validate_tools(value: Any, field: str = "tools") -> list[Tool]:
    """Function tools, as Paddler and OpenAI declare them, for the template."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidRequest(field, "must be a list of tools")
    for index, tool in enumerate(value):
        where = f"{field}[{index}]"
        if not isinstance(tool, dict):
            raise InvalidRequest(where, "must be an object")
        if tool.get("type", "function") != "function":
            raise InvalidRequest(f"{where}.type", 'must be "function"')
        function = tool.get("function")
        if not isinstance(function, dict):
            raise InvalidRequest(f"{where}.function", "must be an object")
        name = function.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidRequest(f"{where}.function.name", "must be a non-empty string")
        description = function.get("description")
        if description is not None and not isinstance(description, str):
            raise InvalidRequest(f"{where}.function.description", "must be a string")
        parameters = function.get("parameters")
        if parameters is not None and not isinstance(parameters, dict):
            raise InvalidRequest(f"{where}.function.parameters", "must be an object")
    return [dict(tool) for tool in value]


def validate_raw_prompt(body: Any) -> RawPromptParams:
    body = _require_keys(
        body, {"raw_prompt", "max_tokens", "grammar"}, {"raw_prompt", "max_tokens"}
    )
    if not isinstance(body["raw_prompt"], str):
        raise InvalidRequest("raw_prompt", "must be a string")
    if not body["raw_prompt"]:
        raise InvalidRequest("raw_prompt", "must not be empty")
    return {
        "raw_prompt": body["raw_prompt"],
        "max_tokens": _max_tokens(body["max_tokens"]),
        "grammar": validate_grammar(body.get("grammar")),
    }


def _message(index: int, value: Any) -> Message:
    where = f"conversation_history[{index}]"
    if not isinstance(value, dict):
        raise InvalidRequest(where, "must be an object")
    role = value.get("role")
    if not isinstance(role, str):
        raise InvalidRequest(f"{where}.role", "is required and must be a string")
    if role not in ROLES:
        raise InvalidRequest(f"{where}.role", f"must be one of {', '.join(ROLES)}")
    content = value.get("content")
    message = dict(value)
    if isinstance(content, list):
        message["content"] = content_parts(f"{where}.content", content)
    elif not isinstance(content, str):
        raise InvalidRequest(f"{where}.content", "must be a string or a list of parts")
    return message


def validate_conversation(body: Any) -> ConversationParams:
    body = _require_keys(
        body,
        {
            "add_generation_prompt",
            "conversation_history",
            "enable_thinking",
            "max_tokens",
            "grammar",
            "tools",
            "parse_tool_calls",
        },
        {"conversation_history", "max_tokens"},
    )
    history = body["conversation_history"]
    if not isinstance(history, list):
        raise InvalidRequest("conversation_history", "must be a list of messages")
    if not history:
        raise InvalidRequest("conversation_history", "must not be empty")
    for name in ("add_generation_prompt", "enable_thinking", "parse_tool_calls"):
        if name in body and not isinstance(body[name], bool):
            raise InvalidRequest(name, "must be true or false")
    params: ConversationParams = {
        "conversation_history": [_message(i, m) for i, m in enumerate(history)],
        "add_generation_prompt": body.get("add_generation_prompt", True),
        "enable_thinking": body.get("enable_thinking", False),
        "max_tokens": _max_tokens(body["max_tokens"]),
        "grammar": validate_grammar(body.get("grammar")),
        "tools": validate_tools(body.get("tools", [])),
    }
    if "parse_tool_calls" in body:
        # Paddler 4.x: false leaves a tool call in the answer as content.
        params["parse_tool_calls"] = body["parse_tool_calls"]
    return params


MAX_EMBEDDING_DOCUMENTS = 10_000


def validate_normalization(value: Any) -> Normalization:
    if value == "L2":
        return "L2"
    if value == "None":
        return "None"
    if isinstance(value, dict) and set(value) == {"RmsNorm"}:
        inner = value["RmsNorm"]
        if isinstance(inner, dict) and set(inner) == {"epsilon"}:
            epsilon = inner["epsilon"]
            number = isinstance(epsilon, (int, float)) and not isinstance(epsilon, bool)
            if number and epsilon > 0:
                return {"RmsNorm": {"epsilon": float(epsilon)}}
        raise InvalidRequest(
            "normalization_method.RmsNorm.epsilon", "must be a positive number"
        )
    raise InvalidRequest(
        "normalization_method", 'must be "L2", "None" or {"RmsNorm": {"epsilon": e}}'
    )


def validate_embedding_batch(body: Any) -> EmbeddingParams:
    body = _require_keys(body, {"input_batch", "normalization_method"}, {"input_batch"})
    batch = body["input_batch"]
    if not isinstance(batch, list) or not batch:
        raise InvalidRequest("input_batch", "must be a non-empty list of documents")
    if len(batch) > MAX_EMBEDDING_DOCUMENTS:
        raise InvalidRequest(
            "input_batch", f"must hold at most {MAX_EMBEDDING_DOCUMENTS} documents"
        )
    documents: list[EmbeddingDocument] = []
    seen: set[str] = set()
    for index, document in enumerate(batch):
        where = f"input_batch[{index}]"
        _require_keys(document, {"id", "content"}, {"id", "content"})
        if not isinstance(document["id"], str):
            raise InvalidRequest(f"{where}.id", "must be a string")
        if not isinstance(document["content"], str):
            raise InvalidRequest(f"{where}.content", "must be a string")
        if document["id"] in seen:
            raise InvalidRequest(f"{where}.id", "is used by another document")
        seen.add(document["id"])
        documents.append({"id": document["id"], "content": document["content"]})
    return {
        "input_batch": documents,
        "normalization_method": validate_normalization(
            body.get("normalization_method", "None")
        ),
    }
