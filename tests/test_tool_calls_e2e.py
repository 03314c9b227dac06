"""Tool calls end to end: the official ``openai`` client gets parsed calls
from the demo model (a real agent, llama.cpp, the Gemma 3 270M base model)
when a call is required, whole and streamed.

The demo model never learnt tool calling; with ``tool_choice: "required"``
(or a named function) the agent constrains its output with a grammar built
from the tools' schemas, in the format of the template in use (the test
override is Gemma's turn format: the generic JSON form), and parses it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests.support.web import WebServer

MODEL = "gemma3-270m-q4_k_m"
QUESTION: Any = [{"role": "user", "content": "What is the weather in Paris?"}]
WEATHER: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 20},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
TIME: Any = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "The time in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 20}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}


@pytest.fixture(scope="module")
def client(api_platform: WebServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=f"{api_platform.url}/v1", api_key="unused", max_retries=0, timeout=120
    ) as client:
        yield client


def test_a_required_tool_call_comes_back_parsed(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=MODEL,
        messages=QUESTION,
        tools=[WEATHER],
        tool_choice="required",
        max_tokens=64,
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls
    assert calls is not None and len(calls) == 1
    call = calls[0]
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather"
    arguments = json.loads(call.function.arguments)
    assert set(arguments) == {"city", "unit"}
    assert arguments["unit"] in ("celsius", "fahrenheit")
    assert completion.usage is not None
    assert completion.usage.completion_tokens > 0


def test_a_required_tool_call_streams_as_deltas(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL,
        messages=QUESTION,
        tools=[WEATHER],
        tool_choice="required",
        max_tokens=64,
        stream=True,
    )
    names: list[str] = []
    arguments = ""
    reasons: list[str] = []
    content = ""
    for chunk in stream:
        for choice in chunk.choices:
            for delta in choice.delta.tool_calls or []:
                assert delta.index == 0
                if delta.function and delta.function.name:
                    names.append(delta.function.name)
                if delta.function and delta.function.arguments:
                    arguments += delta.function.arguments
            content += choice.delta.content or ""
            if choice.finish_reason:
                reasons.append(choice.finish_reason)
    assert names == ["get_weather"]
    assert set(json.loads(arguments)) == {"city", "unit"}
    assert reasons == ["tool_calls"]
    # The call's text is not also sent as content.
    assert "get_weather" not in content


def test_a_named_function_is_the_one_called(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=MODEL,
        messages=QUESTION,
        tools=[WEATHER, TIME],
        tool_choice={"type": "function", "function": {"name": "get_time"}},
        max_tokens=64,
    )
    calls = completion.choices[0].message.tool_calls
    assert calls is not None
    functions = [c.function for c in calls if c.type == "function"]
    assert [function.name for function in functions] == ["get_time"]
    assert set(json.loads(functions[0].arguments)) == {"city"}


def test_tool_choice_none_offers_no_tools_and_returns_text(
    client: openai.OpenAI,
) -> None:
    completion = client.chat.completions.create(
        model=MODEL,
        messages=QUESTION,
        tools=[WEATHER],
        tool_choice="none",
        max_tokens=8,
    )
    choice = completion.choices[0]
    assert choice.message.tool_calls is None
    assert choice.message.content
    assert choice.finish_reason == "length"


def test_a_named_function_that_was_not_offered_is_refused(
    client: openai.OpenAI,
) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(
            model=MODEL,
            messages=QUESTION,
            tools=[WEATHER],
            tool_choice={"type": "function", "function": {"name": "launch"}},
        )
    assert raised.value.param == "tool_choice.function.name"
