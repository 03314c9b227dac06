"""OpenAI chat completions carry the agent's reasoning as
``reasoning_content`` and its parsed calls as ``tool_calls``, whole and
streamed; unreadable tool-call text comes back as content, not lost.

The demo model does not think, so the agent's items are given here (the
agent side is ``test_output_split``); the views' own functions shape them."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, cast

from balancer.contract import (
    OutputItem,
    Usage,
    content_token_item,
    reasoning_token_item,
    tool_call_parse_failed_item,
    tool_call_parsed_item,
    tool_call_token_item,
)
from balancer.stream import Stream
from inference.openai.requests import parse_chat_request
from inference.openai.responses import Reply
from inference.openai.views import _collect, _events


def _done(reasoning: int, content: int) -> OutputItem:
    usage: Usage = {
        "prompt_tokens": 4,
        "content_tokens": content,
        "reasoning_tokens": reasoning,
    }
    return {
        "request_id": "r",
        "response": {"GeneratedToken": {"Done": {"usage": usage}}},
        "error": None,
        "final": True,
        "meta": None,
    }


class _Given:
    """A stream that yields the given items, one batch each."""

    def __init__(self, items: list[OutputItem]) -> None:
        self._items = items
        self.closed = False

    async def items(self) -> AsyncIterator[OutputItem]:
        for item in self._items:
            yield item

    async def batches(self) -> AsyncGenerator[list[OutputItem]]:
        for item in self._items:
            yield [item]

    async def close(self) -> None:
        self.closed = True


THINKING = [
    reasoning_token_item("r", "Think"),
    reasoning_token_item("r", "ing."),
    content_token_item("r", "Paris."),
    _done(reasoning=2, content=1),
]
CALLING = [
    tool_call_token_item("r", '{"name": "f", "arguments": {}}'),
    tool_call_parsed_item(
        "r", [{"id": "call_1", "name": "f", "arguments": {"ValidJson": {"a": 1}}}]
    ),
    _done(reasoning=0, content=0),
]


def _stream(items: list[OutputItem]) -> Stream:
    return cast(Stream, _Given(items))


def test_reasoning_is_collected_apart_from_the_answer() -> None:
    collected = asyncio.run(_collect(_stream(THINKING)))
    assert collected.text() == "Paris."
    assert "".join(collected.reasoning) == "Thinking."
    assert collected.finished is not None
    usage = collected.finished.openai_usage()
    assert usage["completion_tokens"] == 3
    assert usage["completion_tokens_details"]["reasoning_tokens"] == 2


def _chunks(items: list[OutputItem]) -> list[dict[str, Any]]:
    request = parse_chat_request(
        {"model": "m", "messages": [{"role": "user", "content": "Hi"}], "stream": True}
    )

    async def read() -> list[bytes]:
        return [
            data async for data in _events(_stream(items), request, Reply.new("c", "m"))
        ]

    lines = b"".join(asyncio.run(read())).decode().split("\n\n")
    return [
        json.loads(line.removeprefix("data: "))
        for line in lines
        if line.startswith("data: {")
    ]


def test_reasoning_streams_as_reasoning_content_deltas() -> None:
    deltas = [chunk["choices"][0]["delta"] for chunk in _chunks(THINKING)]
    assert [d["reasoning_content"] for d in deltas if "reasoning_content" in d] == [
        "Think",
        "ing.",
    ]
    assert "".join(d.get("content") or "" for d in deltas) == "Paris."


def test_parsed_calls_stream_as_tool_call_deltas_and_finish_with_tool_calls() -> None:
    chunks = _chunks(CALLING)
    calls = [
        call
        for chunk in chunks
        for call in chunk["choices"][0]["delta"].get("tool_calls", [])
    ]
    assert calls == [
        {
            "index": 0,
            "id": "call_1",
            "type": "function",
            "function": {"name": "f", "arguments": '{"a": 1}'},
        }
    ]
    reasons = [chunk["choices"][0]["finish_reason"] for chunk in chunks]
    assert reasons[-1] == "tool_calls"
    # The call's text is not also sent as content.
    assert not any(chunk["choices"][0]["delta"].get("content") for chunk in chunks)


def test_unreadable_tool_call_text_comes_back_as_content() -> None:
    items = [
        tool_call_token_item("r", "<tool_call>oops"),
        tool_call_parse_failed_item("r", "not JSON"),
        _done(reasoning=0, content=0),
    ]
    collected = asyncio.run(_collect(_stream(items)))
    assert collected.text() == "<tool_call>oops" and not collected.calls
    streamed = "".join(
        chunk["choices"][0]["delta"].get("content") or "" for chunk in _chunks(items)
    )
    assert streamed == "<tool_call>oops"
