"""Tool calls read from model output in each family's format, and the
grammar that makes a model write one (``balancer.tool_calls``,
``agents.tool_grammar``): plain functions, no model."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import llama_cpp
import pytest

from agents.tool_grammar import ToolGrammarError, _framing, tool_call_grammar
from balancer.model_offer import ToolCallFormat
from balancer.tool_calls import (
    DEEPSEEK_CALL_BEGIN,
    DEEPSEEK_CALL_END,
    DEEPSEEK_CALLS_BEGIN,
    DEEPSEEK_CALLS_END,
    DEEPSEEK_SEP,
    ToolCallParseError,
    parse_tool_calls,
    starts_tool_call,
    validate_arguments,
)

ARGS = {"city": "Zürich", "days": 2}
TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string"},
                    "days": {"type": "integer"},
                },
                "required": ["city"],
            },
        },
    },
    {"type": "function", "function": {"name": "ping"}},
]


def _names_and_arguments(text: str, format: ToolCallFormat) -> list[tuple[str, Any]]:
    return [(call.name, call.arguments) for call in parse_tool_calls(text, format)]


@pytest.mark.parametrize(
    ("format", "text", "expected"),
    [
        (
            "hermes",
            'Let me check.<tool_call>\n{"name": "get_weather", "arguments": '
            '{"city": "Zürich", "days": 2}}\n</tool_call>\n<tool_call>\n'
            '{"name": "ping", "arguments": {}}\n</tool_call>',
            [("get_weather", ARGS), ("ping", {})],
        ),
        (
            "llama3",
            '{"name": "get_weather", "parameters": {"city": "Zürich", "days": 2}}',
            [("get_weather", ARGS)],
        ),
        (
            "llama3",
            '{"name": "ping", "parameters": {}}; '
            '{"name": "get_weather", "parameters": {"city": "Zürich", "days": 2}}',
            [("ping", {}), ("get_weather", ARGS)],
        ),
        (
            "llama3",
            '<|python_tag|>brave_search.call(query="weather Zürich", count=3)',
            [("brave_search", {"query": "weather Zürich", "count": 3})],
        ),
        (
            "mistral",
            '[TOOL_CALLS][{"name": "get_weather", "arguments": '
            '{"city": "Zürich", "days": 2}}, {"name": "ping", "arguments": {}}]',
            [("get_weather", ARGS), ("ping", {})],
        ),
        (
            "mistral",
            '[TOOL_CALLS]get_weather[ARGS]{"city": "Zürich", "days": 2}'
            "[TOOL_CALLS]ping[ARGS]{}",
            [("get_weather", ARGS), ("ping", {})],
        ),
        (
            "harmony",
            "<|channel|>analysis<|message|>Need weather.<|end|><|start|>assistant"
            "<|channel|>commentary to=functions.get_weather <|constrain|>json"
            '<|message|>{"city": "Zürich", "days": 2}<|call|>',
            [("get_weather", ARGS)],
        ),
        (
            "deepseek",
            f"{DEEPSEEK_CALLS_BEGIN}{DEEPSEEK_CALL_BEGIN}function{DEEPSEEK_SEP}"
            'get_weather\n```json\n{"city": "Zürich", "days": 2}\n```'
            f"{DEEPSEEK_CALL_END}{DEEPSEEK_CALLS_END}",
            [("get_weather", ARGS)],
        ),
        (
            "deepseek",
            f"{DEEPSEEK_CALLS_BEGIN}{DEEPSEEK_CALL_BEGIN}get_weather{DEEPSEEK_SEP}"
            f'{{"city": "Zürich", "days": 2}}{DEEPSEEK_CALL_END}'
            f"{DEEPSEEK_CALL_BEGIN}ping{DEEPSEEK_SEP}{{}}{DEEPSEEK_CALL_END}"
            f"{DEEPSEEK_CALLS_END}",
            [("get_weather", ARGS), ("ping", {})],
        ),
        (
            "generic",
            '{"tool_calls": [{"name": "get_weather", "arguments": '
            '{"city": "Zürich", "days": 2}}]}',
            [("get_weather", ARGS)],
        ),
        (
            "generic",
            '{"tool_call": {"name": "ping", "arguments": "{}"}}',
            [("ping", {})],
        ),
    ],
)
def test_each_familys_tool_calls_are_parsed(
    format: ToolCallFormat, text: str, expected: list[tuple[str, Any]]
) -> None:
    assert _names_and_arguments(text, format) == expected


def test_arguments_that_are_not_json_are_kept_as_text() -> None:
    (call,) = parse_tool_calls(
        "to=functions.ping<|message|>{not json<|call|>", "harmony"
    )
    assert not call.valid_json and call.arguments == "{not json"
    assert call.arguments_text() == "{not json"


@pytest.mark.parametrize(
    ("format", "text"),
    [
        ("hermes", "no call here"),
        ("generic", '{"name": 3}'),
        ("generic", "{broken"),
        ("deepseek", "plain"),
    ],
)
def test_text_without_a_call_is_a_parse_error(
    format: ToolCallFormat, text: str
) -> None:
    with pytest.raises(ToolCallParseError):
        parse_tool_calls(text, format)


def test_where_a_call_starts() -> None:
    assert starts_tool_call("Sure. <tool_call>{", "hermes") == 6
    assert starts_tool_call('  {"name"', "generic") == 0
    assert starts_tool_call("It is {x}", "generic") is None
    assert starts_tool_call("Plain text", "hermes") is None


def test_calls_are_validated_against_the_tools_offered() -> None:
    calls = parse_tool_calls(
        '{"tool_calls": [{"name": "get_weather", "arguments": {"days": 1}},'
        ' {"name": "launch", "arguments": {}}]}',
        "generic",
    )
    errors = [error for call in calls for error in validate_arguments(call, TOOLS)]
    assert errors == [
        "get_weather: the required argument 'city' is missing",
        "launch: no tool of that name was offered",
    ]


FORMATS: list[ToolCallFormat] = [
    "hermes",
    "llama3",
    "mistral",
    "harmony",
    "deepseek",
    "generic",
]


@pytest.fixture(scope="module")
def vocab(model_path: Path) -> Iterator[Any]:
    """The demo model's vocabulary only: enough for llama.cpp to parse a
    grammar."""
    llama_cpp.llama_backend_init()
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = llama_cpp.llama_model_load_from_file(str(model_path).encode(), params)
    assert model
    yield llama_cpp.llama_model_get_vocab(model)
    llama_cpp.llama_model_free(model)


@pytest.mark.parametrize("format", FORMATS)
def test_the_grammar_compiles_and_frames_what_the_parser_reads(
    format: ToolCallFormat, vocab: Any
) -> None:
    grammar = tool_call_grammar(TOOLS, format)
    # llama.cpp's own grammar parser accepts it.
    sampler = llama_cpp.llama_sampler_init_grammar(vocab, grammar.encode(), b"root")
    assert sampler
    llama_cpp.llama_sampler_free(sampler)
    assert grammar.count("root ::=") == 1
    # What the grammar lets the model write, the parser reads back.
    before, after = _framing(format, "get_weather")
    text = before + json.dumps(ARGS, ensure_ascii=False) + after
    assert _names_and_arguments(text, format) == [("get_weather", ARGS)]


def test_a_named_function_grammar_offers_that_function_only() -> None:
    grammar = tool_call_grammar(TOOLS, "hermes", "ping")
    assert '\\"ping\\"' in grammar and "get_weather" not in grammar
    with pytest.raises(ToolGrammarError, match="no tool named 'launch'"):
        tool_call_grammar(TOOLS, "hermes", "launch")


def test_an_unusable_schema_is_a_grammar_error() -> None:
    tools = [
        {
            "type": "function",
            "function": {"name": "f", "parameters": {"$ref": "#/nowhere"}},
        }
    ]
    with pytest.raises(ToolGrammarError, match="parameters of 'f' cannot be used"):
        tool_call_grammar(tools, "generic")
