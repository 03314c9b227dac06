from __future__ import annotations

import pytest

from balancer.prompt_limits import PromptTooLarge, check_prompt_bounds
from inference.openai.errors import OpenAIError
from inference.openai.requests import response_format_grammar
from inference.validation import (
    InvalidRequest,
    validate_conversation,
    validate_grammar,
    validate_raw_prompt,
)


def test_raw_prompt_is_accepted_with_its_grammar() -> None:
    params = validate_raw_prompt(
        {
            "raw_prompt": "hi",
            "max_tokens": 3,
            "grammar": {"type": "gbnf", "grammar": "root ::= [a-z]+"},
        }
    )
    assert params["grammar"] == {
        "type": "gbnf",
        "grammar": "root ::= [a-z]+",
        "root": "root",
    }


def test_conversation_defaults_add_generation_prompt() -> None:
    params = validate_conversation(
        {"conversation_history": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    )
    assert params["add_generation_prompt"] is True
    assert params["enable_thinking"] is False


@pytest.mark.parametrize(
    ("grammar", "field"),
    [
        ("root ::= x", "grammar"),
        ({"type": "regex"}, "grammar.type"),
        ({"type": "gbnf", "grammar": ""}, "grammar.grammar"),
        ({"type": "json_schema", "schema": {"type": "object"}}, "grammar.schema"),
    ],
)
def test_malformed_grammar_names_the_field(grammar: object, field: str) -> None:
    with pytest.raises(InvalidRequest) as error:
        validate_grammar(grammar)
    assert error.value.field == field


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ([], "body"),
        ({"raw_prompt": "x", "max_tokens": True}, "max_tokens"),
        ({"raw_prompt": 5, "max_tokens": 1}, "raw_prompt"),
        ({"raw_prompt": "", "max_tokens": 1}, "raw_prompt"),
    ],
)
def test_raw_prompt_rejections(body: object, field: str) -> None:
    with pytest.raises(InvalidRequest) as error:
        validate_raw_prompt(body)
    assert error.value.field == field


def test_message_content_must_be_text_or_parts() -> None:
    with pytest.raises(InvalidRequest) as error:
        validate_conversation(
            {"conversation_history": [{"role": "user", "content": 3}], "max_tokens": 1}
        )
    assert error.value.field == "conversation_history[0].content"


def test_fast_ndjson_token_line_is_the_envelope_json() -> None:
    import json

    from inference.envelopes import ndjson_line, paddler_envelope

    for text in [" plain", 'say "hi"', "line\nbreak", "émoji 🚲", "\\", ""]:
        item = {
            "request_id": "abc",
            "response": {"GeneratedToken": {"ContentToken": text}},
            "error": None,
            "final": False,
            "meta": None,
        }
        line = ndjson_line(item, 'agent "one"')  # type: ignore[arg-type]
        assert line == json.dumps(paddler_envelope(item, 'agent "one"')) + "\n"  # type: ignore[arg-type]


def test_a_grammar_nested_too_deep_is_refused_naming_the_limit() -> None:
    deep = "root ::= " + "(" * 100_000 + '"a"' + ")" * 100_000
    with pytest.raises(InvalidRequest, match=r"grammar\.grammar: the grammar is"):
        validate_grammar({"type": "gbnf", "grammar": deep})
    deep = "root ::= " + "(" * 1_000 + '"a"' + ")" * 1_000
    with pytest.raises(InvalidRequest, match="nests groups more than 100 deep"):
        validate_grammar({"type": "gbnf", "grammar": deep})


def test_a_json_schema_nested_too_deep_is_refused_naming_the_limit() -> None:
    schema = '{"items": ' * 100 + "{}" + "}" * 100
    with pytest.raises(InvalidRequest, match="nests more than 64 deep"):
        validate_grammar({"type": "json_schema", "schema": schema})
    nested: dict[str, object] = {}
    for _ in range(100):
        nested = {"type": "array", "items": nested}
    with pytest.raises(OpenAIError, match="nests more than 64 deep"):
        response_format_grammar(
            {"type": "json_schema", "json_schema": {"name": "x", "schema": nested}}
        )


def test_prompts_that_cannot_fit_the_context_are_refused_untokenized() -> None:
    with pytest.raises(PromptTooLarge, match="holds at most 131072"):
        check_prompt_bounds(
            {
                "raw_prompt": "<start_of_turn>" * 50_000,
                "max_tokens": 1,
                "grammar": None,
            },
            context_size=2048,
        )
    many = [{"role": "user", "content": "x"}] * 2049
    with pytest.raises(PromptTooLarge, match="has 2049 messages"):
        check_prompt_bounds(
            {
                "conversation_history": many,
                "add_generation_prompt": True,
                "enable_thinking": False,
                "max_tokens": 1,
                "grammar": None,
                "tools": [],
            },
            context_size=2048,
        )
    check_prompt_bounds(
        {"raw_prompt": "Hello", "max_tokens": 1, "grammar": None}, context_size=2048
    )
