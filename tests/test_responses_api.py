"""The Responses API (``POST /v1/responses``) as the official ``openai``
client calls it (``client.responses.create``): text, a required function
call, whole and streamed, against a real agent; reasoning items from the
stream's reasoning tokens (unit: the demo model does not think)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from balancer.contract import Usage
from inference.openai.output import Finished, ReasoningPiece, TextPiece
from inference.openai.responses_api import ResponseBuilder
from tests.support.web import WebServer

MODEL = "gemma3-270m-q4_k_m"
WEATHER: Any = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 20}},
        "required": ["city"],
        "additionalProperties": False,
    },
}


@pytest.fixture(scope="module")
def client(api_platform: WebServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=f"{api_platform.url}/v1", api_key="unused", max_retries=0, timeout=120
    ) as client:
        yield client


def test_a_text_response(client: openai.OpenAI) -> None:
    response = client.responses.create(
        model=MODEL,
        instructions="Answer briefly.",
        input="Name a fruit that is yellow.",
        max_output_tokens=8,
    )
    assert response.object == "response" and response.id.startswith("resp_")
    assert response.output_text
    assert [item.type for item in response.output] == ["message"]
    assert response.usage is not None and response.usage.output_tokens == 8
    assert response.status == "incomplete"
    assert response.incomplete_details is not None


def test_a_streamed_text_response(client: openai.OpenAI) -> None:
    stream = client.responses.create(
        model=MODEL,
        input="Name a fruit that is yellow.",
        max_output_tokens=8,
        stream=True,
    )
    kinds: list[str] = []
    deltas = ""
    final = None
    for event in stream:
        kinds.append(event.type)
        if event.type == "response.output_text.delta":
            deltas += event.delta
        if event.type == "response.completed":
            final = event.response
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    assert "response.output_item.added" in kinds
    assert "response.output_text.done" in kinds
    assert final is not None and deltas and final.output_text == deltas


def test_a_required_function_call(client: openai.OpenAI) -> None:
    response = client.responses.create(
        model=MODEL,
        input="What is the weather in Paris?",
        tools=[WEATHER],
        tool_choice="required",
        max_output_tokens=64,
    )
    calls = [item for item in response.output if item.type == "function_call"]
    assert len(calls) == 1
    assert calls[0].name == "get_weather"
    assert set(json.loads(calls[0].arguments)) == {"city"}
    assert calls[0].call_id.startswith("call_")


def test_a_streamed_function_call(client: openai.OpenAI) -> None:
    stream = client.responses.create(
        model=MODEL,
        input="What is the weather in Paris?",
        tools=[WEATHER],
        tool_choice={"type": "function", "name": "get_weather"},
        max_output_tokens=64,
        stream=True,
    )
    done = [e for e in stream if e.type == "response.function_call_arguments.done"]
    assert len(done) == 1
    assert set(json.loads(done[0].arguments)) == {"city"}


def test_an_unknown_field_is_refused(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client.responses.create(
            model=MODEL, input="Hi", extra_body={"prompt_cache_retention": "x"}
        )
    assert raised.value.param == "prompt_cache_retention"


def test_a_text_format_it_cannot_enforce_is_refused() -> None:
    from inference.openai.errors import OpenAIError
    from inference.openai.responses_api import parse_responses_request

    body = {
        "model": MODEL,
        "input": "Hi",
        "text": {"format": {"type": "json_schema", "name": "x", "schema": {}}},
    }
    with pytest.raises(OpenAIError) as raised:
        parse_responses_request(body)
    assert raised.value.param == "text.format"


def test_reasoning_streams_as_a_reasoning_item_before_the_message() -> None:
    builder = ResponseBuilder("m", {}, max_tokens=100)
    events: list[dict[str, Any]] = []
    for event in (
        ReasoningPiece("Think"),
        ReasoningPiece("ing."),
        TextPiece("Answer."),
        Finished(Usage(prompt_tokens=3, content_tokens=1, reasoning_tokens=2)),
    ):
        events += builder.events(event)
    kinds = [event["type"] for event in events]
    assert kinds.index("response.reasoning_text.delta") < kinds.index(
        "response.output_text.delta"
    )
    final = events[-1]["response"]
    assert [item["type"] for item in final["output"]] == ["reasoning", "message"]
    assert final["output"][0]["content"][0]["text"] == "Thinking."
    assert final["usage"]["output_tokens_details"]["reasoning_tokens"] == 2
    numbers = [event["sequence_number"] for event in events]
    assert numbers == sorted(numbers)
