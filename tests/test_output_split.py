"""A generation's text split into content, reasoning and tool calls
(``agents.output_split``), as Paddler's items that its own client reads;
and grammar with thinking refused as Paddler refuses it."""

from __future__ import annotations

from typing import Any, cast

from paddler_client.inference_message import (
    InferenceMessageKind,
    parse_inference_client_message,
)
from paddler_client.tool_call_arguments import ValidJson

from agents.jobs import Generation, Output
from agents.messages import job_from_request
from agents.output_split import OutputSplitter
from balancer.contract import OutputItem, RequestParams
from balancer.events import InferenceRequestEvent

TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]


def _run(splitter: OutputSplitter, pieces: list[str]) -> list[OutputItem]:
    items: list[OutputItem] = []
    for piece in pieces:
        items += splitter.feed(piece)
    return items + splitter.finish()


def _messages(items: list[OutputItem]) -> list[Any]:
    """The items as Paddler's own client reads them off the wire."""
    return [
        parse_inference_client_message(
            {"Response": {"request_id": "r", "response": item["response"]}}
        )
        for item in items
    ]


def _texts(items: list[OutputItem]) -> list[tuple[InferenceMessageKind, str]]:
    return [
        (message.kind, message.token)
        for message in _messages(items)
        if message.token is not None
    ]


def test_think_blocks_stream_as_reasoning_tokens() -> None:
    splitter = OutputSplitter("r", None, "think_tags")
    items = _run(
        splitter,
        ["<th", "ink>", "Paris is ", "in France", "</th", "ink>\n\n", "Paris."],
    )
    assert _texts(items) == [
        (InferenceMessageKind.REASONING_TOKEN, "Paris is "),
        (InferenceMessageKind.REASONING_TOKEN, "in France"),
        (InferenceMessageKind.CONTENT_TOKEN, "Paris."),
    ]
    assert splitter.reasoning_tokens == 4


def test_a_prompt_that_opens_thinking_starts_in_reasoning() -> None:
    splitter = OutputSplitter("r", None, "think_tags", state="reasoning")
    items = _run(splitter, ["hmm", "</think>", "Yes"])
    assert _texts(items) == [
        (InferenceMessageKind.REASONING_TOKEN, "hmm"),
        (InferenceMessageKind.CONTENT_TOKEN, "Yes"),
    ]


def test_harmony_channels_split_reasoning_from_the_answer() -> None:
    splitter = OutputSplitter("r", None, "harmony")
    items = _run(
        splitter,
        [
            "<|channel|>analysis<|message|>",
            "Think.",
            "<|end|><|start|>assistant<|channel|>final<|message|>",
            "Answer.",
            "<|return|>",
        ],
    )
    assert _texts(items) == [
        (InferenceMessageKind.REASONING_TOKEN, "Think."),
        (InferenceMessageKind.CONTENT_TOKEN, "Answer."),
    ]


def test_a_tool_call_streams_as_tool_call_tokens_then_parsed_items() -> None:
    splitter = OutputSplitter("r", "hermes", "none", tools=TOOLS)
    items = _run(
        splitter,
        [
            "Checking.",
            "<tool",
            "_call>",
            '{"name": "get_weather", ',
            '"arguments": {"city": "Paris"}}',
            "</tool_call>",
        ],
    )
    messages = _messages(items)
    kinds = [message.kind for message in messages]
    assert kinds == [
        InferenceMessageKind.CONTENT_TOKEN,
        InferenceMessageKind.TOOL_CALL_TOKEN,
        InferenceMessageKind.TOOL_CALL_TOKEN,
        InferenceMessageKind.TOOL_CALL_TOKEN,
        InferenceMessageKind.TOOL_CALL_TOKEN,
        InferenceMessageKind.TOOL_CALL_PARSED,
    ]
    assert messages[0].token == "Checking."
    (call,) = messages[-1].parsed_tool_calls
    assert call.name == "get_weather"
    assert call.arguments == ValidJson({"city": "Paris"})
    # "<tool" was held, so it counts with "_call>", which opened the call.
    assert splitter.tool_call_tokens == 4


def test_arguments_that_miss_a_required_field_are_reported_by_name() -> None:
    splitter = OutputSplitter("r", "generic", "none", tools=TOOLS)
    items = _run(splitter, ['{"name": "get_weather", "arguments": {}}'])
    last = _messages(items)[-1]
    assert last.kind == InferenceMessageKind.TOOL_CALL_VALIDATION_FAILED
    assert last.error_message == "get_weather: the required argument 'city' is missing"


def test_unreadable_tool_call_text_is_a_parse_failure_not_lost() -> None:
    splitter = OutputSplitter("r", "hermes", "none", tools=TOOLS)
    items = _run(splitter, ["<tool_call>", "not json"])
    messages = _messages(items)
    assert messages[0].token == "<tool_call>"
    assert messages[1].token == "not json"
    assert messages[-1].kind == InferenceMessageKind.TOOL_CALL_PARSE_FAILED


def test_text_that_only_looks_like_a_marker_is_content() -> None:
    splitter = OutputSplitter("r", "hermes", "think_tags", tools=TOOLS)
    items = _run(splitter, ["a <", "b <tool", "s>"])
    assert "".join(text for _, text in _texts(items)) == "a <b <tools>"
    assert {kind for kind, _ in _texts(items)} == {InferenceMessageKind.CONTENT_TOKEN}


def test_without_tools_json_stays_content() -> None:
    splitter = OutputSplitter("r", None, "none")
    items = _run(splitter, ['{"name": "x"}'])
    assert _texts(items) == [(InferenceMessageKind.CONTENT_TOKEN, '{"name": "x"}')]


def _event(**params: Any) -> InferenceRequestEvent:
    full = {
        "conversation_history": [{"role": "user", "content": "Hi"}],
        "add_generation_prompt": True,
        "enable_thinking": True,
        "max_tokens": 8,
        "grammar": None,
        "tools": [],
        **params,
    }
    return {
        "type": "inference.request",
        "request_id": "r",
        "reply_to": "inbox",
        "kind": "conversation",
        "params": cast(RequestParams, full),
    }


def _variant(result: Generation | Any) -> str:
    assert isinstance(result, Output)
    response = result.item["response"]
    assert response is not None and "GeneratedToken" in response
    return str(next(iter(response["GeneratedToken"])))


def test_a_grammar_with_thinking_gets_paddlers_error() -> None:
    grammar = {"type": "gbnf", "grammar": 'root ::= "a"', "root": "root"}
    result = job_from_request(_event(grammar=grammar), system_prompt="")
    assert _variant(result) == "GrammarIncompatibleWithThinking"
    message = _messages([cast(Output, result).item])[0]
    assert message.kind == InferenceMessageKind.GRAMMAR_INCOMPATIBLE_WITH_THINKING


def test_a_required_tool_call_with_thinking_gets_the_same_error() -> None:
    result = job_from_request(
        _event(tools=TOOLS, tool_choice="required"), system_prompt=""
    )
    assert _variant(result) == "GrammarIncompatibleWithThinking"


def test_thinking_without_a_grammar_is_a_job() -> None:
    result = job_from_request(_event(tools=TOOLS), system_prompt="")
    assert isinstance(result, Generation) and result.enable_thinking


def test_parse_tool_calls_false_reaches_the_job() -> None:
    from inference.validation import validate_conversation

    params = validate_conversation(
        {
            "conversation_history": [{"role": "user", "content": "Hi"}],
            "max_tokens": 4,
            "tools": TOOLS,
            "parse_tool_calls": False,
        }
    )
    result = job_from_request(
        _event(**{**params, "enable_thinking": False}), system_prompt=""
    )
    assert isinstance(result, Generation) and not result.parse_tool_calls
