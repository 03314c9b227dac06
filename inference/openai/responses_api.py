"""OpenAI's Responses API (``POST /v1/responses``): requests translated into
a chat completion's, output shaped as a response with typed output items
(reasoning, message, function calls), whole or as its stream of events.

Framework-free.  A request is checked here for the Responses fields, turned
into a chat body and then checked once more by ``parse_chat_request``, so
both APIs reach the agents in one shape.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from balancer.contract import ConversationParams
from inference.openai.errors import OpenAIError, invalid
from inference.openai.output import (
    Finished,
    GenerationEvent,
    ReasoningPiece,
    TextPiece,
    ToolCalls,
    ToolCallsFailed,
    ToolCallText,
)
from inference.openai.requests import GenerationRequest, parse_chat_request
from inference.validation import IMAGE_DETAILS

RESPONSE_FIELDS = frozenset(
    {
        "model",
        "input",
        "instructions",
        "tools",
        "tool_choice",
        "max_output_tokens",
        "temperature",
        "top_p",
        "stream",
        "reasoning",
        "parallel_tool_calls",
        "store",
        "metadata",
        "user",
        "text",
        "truncation",
    }
)


def _reject_unknown(body: dict[str, Any]) -> None:
    for name in body:
        if name not in RESPONSE_FIELDS:
            raise OpenAIError(
                400,
                f"Unrecognized request argument supplied: {name}",
                param=name,
                code="unknown_parameter",
            )


def _content_of(where: str, content: Any) -> str | list[dict[str, Any]]:
    """A message's content: its text, or chat content parts when it holds
    images (``input_image``, whose ``image_url`` is a data: or http(s) URL)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise invalid(where, "must be a string or a list of content parts")
    parts: list[dict[str, Any]] = []
    for index, part in enumerate(content):
        at = f"{where}[{index}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "input_image":
            assert isinstance(part, dict)
            url = part.get("image_url")
            if not isinstance(url, str) or not url:
                raise invalid(
                    f"{at}.image_url",
                    "is required: a data: URL or an http(s) URL (file_id is not "
                    "supported)",
                )
            if part.get("detail", "auto") not in IMAGE_DETAILS:
                raise invalid(
                    f"{at}.detail", f"must be one of {', '.join(IMAGE_DETAILS)}"
                )
            parts.append({"type": "image_url", "image_url": {"url": url}})
            continue
        if kind not in ("input_text", "output_text", "text"):
            raise invalid(f"{at}.type", "only text and input_image parts are supported")
        assert isinstance(part, dict)
        if not isinstance(part.get("text"), str):
            raise invalid(f"{at}.text", "must be a string")
        parts.append({"type": "text", "text": part["text"]})
    if any(part["type"] == "image_url" for part in parts):
        return parts
    return "".join(part["text"] for part in parts)


def _messages(value: Any) -> list[dict[str, Any]]:
    """The input as chat messages: text, messages, earlier function calls
    (an assistant turn with ``tool_calls``) and their outputs (tool turns)."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise invalid("input", "is required: a string or a non-empty list of items")
    messages: list[dict[str, Any]] = []
    for index, item in enumerate(value):
        where = f"input[{index}]"
        if not isinstance(item, dict):
            raise invalid(where, "must be an object")
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise invalid(
                    f"{where}.role", "must be user, assistant, system or developer"
                )
            content = _content_of(f"{where}.content", item.get("content"))
            messages.append({"role": role, "content": content})
        elif kind == "function_call":
            call = {
                "id": str(item.get("call_id", "")),
                "type": "function",
                "function": {
                    "name": str(item.get("name", "")),
                    "arguments": str(item.get("arguments", "{}")),
                },
            }
            previous = messages[-1] if messages else None
            if (
                previous
                and previous["role"] == "assistant"
                and "tool_calls" in previous
            ):
                previous["tool_calls"].append(call)
            else:
                messages.append(
                    {"role": "assistant", "content": "", "tool_calls": [call]}
                )
        elif kind == "function_call_output":
            output = item.get("output")
            if not isinstance(output, str):
                output = json.dumps(output)
            messages.append(
                {
                    "role": "tool",
                    "tool_call_id": str(item.get("call_id", "")),
                    "content": output,
                }
            )
        elif kind == "reasoning":
            continue  # earlier reasoning is not replayed to the model
        else:
            raise invalid(f"{where}.type", f"unsupported input item type {kind!r}")
    return messages


def _chat_tools(value: Any) -> list[dict[str, Any]] | None:
    """Responses' flat function tools as chat completions' nested ones."""
    if value is None:
        return None
    if not isinstance(value, list):
        raise invalid("tools", "must be a list of tools")
    tools: list[dict[str, Any]] = []
    for index, tool in enumerate(value):
        if not isinstance(tool, dict) or tool.get("type") != "function":
            raise invalid(f"tools[{index}].type", 'only "function" tools are supported')
        function = {
            key: tool[key]
            for key in ("name", "description", "parameters")
            if key in tool
        }
        tools.append({"type": "function", "function": function})
    return tools


def _chat_tool_choice(value: Any) -> Any:
    if isinstance(value, dict) and value.get("type") == "function":
        return {"type": "function", "function": {"name": value.get("name")}}
    return value


@dataclass(frozen=True)
class ResponsesRequest:
    generation: GenerationRequest[ConversationParams]
    echo: dict[str, Any]


def parse_responses_request(body: Any) -> ResponsesRequest:
    if not isinstance(body, dict):
        raise OpenAIError(400, "The request body must be a JSON object.")
    _reject_unknown(body)
    messages = _messages(body.get("input"))
    instructions = body.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise invalid("instructions", "must be a string")
        messages.insert(0, {"role": "system", "content": instructions})
    chat: dict[str, Any] = {"model": body.get("model"), "messages": messages}
    for source, target in (
        ("max_output_tokens", "max_completion_tokens"),
        ("temperature", "temperature"),
        ("top_p", "top_p"),
        ("stream", "stream"),
        ("parallel_tool_calls", "parallel_tool_calls"),
    ):
        if body.get(source) is not None:
            chat[target] = body[source]
    tools = _chat_tools(body.get("tools"))
    if tools:
        chat["tools"] = tools
    if body.get("tool_choice") is not None:
        chat["tool_choice"] = _chat_tool_choice(body["tool_choice"])
    text = body.get("text")
    if text is not None:
        kind = text.get("format", {}).get("type") if isinstance(text, dict) else None
        if kind != "text":
            # Structured output is served by chat completions' response_format.
            raise invalid("text.format", 'only {"type": "text"} is supported')
    reasoning = body.get("reasoning")
    if reasoning is not None:
        if not isinstance(reasoning, dict):
            raise invalid("reasoning", "must be an object")
        effort = reasoning.get("effort")
        if effort is not None:
            # Templates with a reasoning switch read these (gpt-oss, Qwen 3).
            chat["chat_template_kwargs"] = {
                "reasoning_effort": effort,
                "enable_thinking": effort not in {"minimal", "none"},
            }
    echo = {
        "instructions": instructions,
        "tools": body.get("tools") or [],
        "tool_choice": body.get("tool_choice") or "auto",
        "temperature": body.get("temperature"),
        "top_p": body.get("top_p"),
        "metadata": body.get("metadata") or {},
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "max_output_tokens": body.get("max_output_tokens"),
        "reasoning": reasoning or {"effort": None, "summary": None},
        "text": body.get("text") or {"format": {"type": "text"}},
    }
    return ResponsesRequest(parse_chat_request(chat), echo)


def _id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def _usage(finished: Finished) -> dict[str, Any]:
    usage = finished.openai_usage()
    return {
        "input_tokens": usage["prompt_tokens"],
        "input_tokens_details": usage["prompt_tokens_details"],
        "output_tokens": usage["completion_tokens"],
        "output_tokens_details": usage["completion_tokens_details"],
        "total_tokens": usage["total_tokens"],
    }


def message_item(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    return {
        "type": "message",
        "id": item_id,
        "status": status,
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": []}]
        if status == "completed"
        else [],
    }


def reasoning_item(item_id: str, text: str) -> dict[str, Any]:
    return {
        "type": "reasoning",
        "id": item_id,
        "summary": [],
        "content": [{"type": "reasoning_text", "text": text}],
    }


def function_call_items(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "type": "function_call",
            "id": _id("fc"),
            "call_id": call["id"],
            "name": call["function"]["name"],
            "arguments": call["function"]["arguments"],
            "status": "completed",
        }
        for call in calls
    ]


@dataclass
class ResponseBuilder:
    """One response, whole or streamed: its identity and its output items."""

    model: str
    echo: dict[str, Any]
    max_tokens: int
    id: str = field(default_factory=lambda: _id("resp"))
    created_at: int = field(default_factory=lambda: int(time.time()))
    output: list[dict[str, Any]] = field(default_factory=list)
    sequence: int = 0
    # The item being streamed: its kind, id and text so far.
    open_kind: str | None = None
    open_id: str = ""
    open_text: list[str] = field(default_factory=list)
    held: list[str] = field(default_factory=list)

    def response(self, status: str, finished: Finished | None = None) -> dict[str, Any]:
        incomplete = (
            finished is not None
            and finished.finish_reason(self.max_tokens) == "length"
            and not any(item["type"] == "function_call" for item in self.output)
        )
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": "incomplete" if incomplete else status,
            "model": self.model,
            "output": self.output,
            "error": None,
            "incomplete_details": {"reason": "max_output_tokens"}
            if incomplete
            else None,
            "usage": _usage(finished) if finished is not None else None,
            **self.echo,
        }

    def event(self, kind: str, **fields: Any) -> dict[str, Any]:
        self.sequence += 1
        return {"type": kind, "sequence_number": self.sequence, **fields}

    # Streaming: each generation event becomes the Responses events it means.
    def events(self, event: GenerationEvent) -> list[dict[str, Any]]:
        if isinstance(event, ReasoningPiece):
            return self._text("reasoning", event.text)
        if isinstance(event, TextPiece):
            return self._text("message", event.text)
        if isinstance(event, ToolCallText):
            self.held.append(event.text)
            return []
        if isinstance(event, ToolCallsFailed):
            text, self.held = "".join(self.held), []
            return self._text("message", text) if text else []
        if isinstance(event, ToolCalls):
            self.held = []
            events = self._close()
            for item in function_call_items(event.calls):
                index = len(self.output)
                self.output.append(item)
                events += [
                    self.event(
                        "response.output_item.added",
                        output_index=index,
                        item={**item, "arguments": "", "status": "in_progress"},
                    ),
                    self.event(
                        "response.function_call_arguments.delta",
                        item_id=item["id"],
                        output_index=index,
                        delta=item["arguments"],
                    ),
                    self.event(
                        "response.function_call_arguments.done",
                        item_id=item["id"],
                        output_index=index,
                        arguments=item["arguments"],
                    ),
                    self.event(
                        "response.output_item.done", output_index=index, item=item
                    ),
                ]
            return events
        if isinstance(event, Finished):
            events = self._close()
            events.append(
                self.event(
                    "response.completed", response=self.response("completed", event)
                )
            )
            return events
        return []

    def _text(self, kind: str, text: str) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        if self.open_kind != kind:
            events += self._close()
            self.open_kind, self.open_id, self.open_text = (
                kind,
                _id("msg" if kind == "message" else "rs"),
                [],
            )
            index = len(self.output)
            if kind == "message":
                item = message_item(self.open_id, "", "in_progress")
                events.append(
                    self.event(
                        "response.output_item.added", output_index=index, item=item
                    )
                )
                events.append(
                    self.event(
                        "response.content_part.added",
                        item_id=self.open_id,
                        output_index=index,
                        content_index=0,
                        part={"type": "output_text", "text": "", "annotations": []},
                    )
                )
            else:
                item = {"type": "reasoning", "id": self.open_id, "summary": []}
                events.append(
                    self.event(
                        "response.output_item.added", output_index=index, item=item
                    )
                )
        self.open_text.append(text)
        delta_kind = (
            "response.output_text.delta"
            if kind == "message"
            else "response.reasoning_text.delta"
        )
        events.append(
            self.event(
                delta_kind,
                item_id=self.open_id,
                output_index=len(self.output),
                content_index=0,
                delta=text,
            )
        )
        return events

    def _close(self) -> list[dict[str, Any]]:
        if self.open_kind is None:
            return []
        text = "".join(self.open_text)
        index = len(self.output)
        events: list[dict[str, Any]] = []
        if self.open_kind == "message":
            item = message_item(self.open_id, text)
            events.append(
                self.event(
                    "response.output_text.done",
                    item_id=self.open_id,
                    output_index=index,
                    content_index=0,
                    text=text,
                )
            )
            events.append(
                self.event(
                    "response.content_part.done",
                    item_id=self.open_id,
                    output_index=index,
                    content_index=0,
                    part=item["content"][0],
                )
            )
        else:
            item = reasoning_item(self.open_id, text)
            events.append(
                self.event(
                    "response.reasoning_text.done",
                    item_id=self.open_id,
                    output_index=index,
                    content_index=0,
                    text=text,
                )
            )
        self.output.append(item)
        events.append(
            self.event("response.output_item.done", output_index=index, item=item)
        )
        self.open_kind = None
        return events
