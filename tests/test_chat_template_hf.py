"""Chat templates render as Hugging Face's ``apply_chat_template`` renders them.

The fixtures in ``tests/fixtures/chat_templates`` are our own templates,
each written in the shape of one family (Qwen, Llama 3.x, Mistral, gpt-oss,
DeepSeek, Gemma) and using its constructs: lenient undefined, strftime_now,
loop controls, tojson's options, the generation block, tools, documents,
thinking switches.  Each is rendered with four conversations by our
renderer (tool-call arguments as JSON text, as OpenAI clients send them)
and by ``tests.support.hf_reference`` (arguments as mappings, as HF's callers
give them); the outputs must be identical.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from balancer.chat_template import ChatTemplate, ChatTemplateError
from tests.support.hf_reference import hf_render

FIXTURES = Path(__file__).parent / "fixtures" / "chat_templates"
TEMPLATES = sorted(path.stem for path in FIXTURES.glob("*.jinja"))

WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "The city"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer", "nullable": True},
            },
            "required": ["city"],
        },
    },
}
CALL_ARGUMENTS = {"city": "Zürich", "unit": "celsius"}


def _call(arguments: Any) -> dict[str, Any]:
    return {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": arguments},
    }


def _conversations(openai_style: bool) -> dict[str, dict[str, Any]]:
    arguments: Any = json.dumps(CALL_ARGUMENTS) if openai_style else CALL_ARGUMENTS
    return {
        "one_user_turn": {"messages": [{"role": "user", "content": "Hello"}]},
        "multi_turn": {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello! <b>ok</b>"},
                {"role": "user", "content": "How are you?"},
            ]
        },
        "tool_offered": {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello!"},
                {"role": "user", "content": "Weather in Zürich?"},
            ],
            "tools": [WEATHER_TOOL],
        },
        "tool_call_and_result": {
            "messages": [
                {"role": "user", "content": "Weather in Zürich?"},
                {"role": "assistant", "content": "", "tool_calls": [_call(arguments)]},
                {"role": "tool", "tool_call_id": "call_1", "content": "21 C, sunny"},
            ],
            "tools": [WEATHER_TOOL],
        },
    }


CONVERSATIONS = sorted(_conversations(True))


def _source(name: str) -> str:
    return (FIXTURES / f"{name}.jinja").read_text()


def _ours(name: str, conversation: str, **kwargs: Any) -> str:
    case = _conversations(openai_style=True)[conversation]
    template = ChatTemplate(_source(name), bos_token="<s>", eos_token="</s>")
    return template.render(
        case["messages"],
        add_generation_prompt=True,
        tools=case.get("tools"),
        **kwargs,
    )


def _reference(name: str, conversation: str, **kwargs: Any) -> str:
    case = _conversations(openai_style=False)[conversation]
    return hf_render(
        _source(name),
        case["messages"],
        tools=case.get("tools"),
        add_generation_prompt=True,
        bos_token="<s>",
        eos_token="</s>",
        **kwargs,
    )


@pytest.mark.parametrize("conversation", CONVERSATIONS)
@pytest.mark.parametrize("name", TEMPLATES)
def test_fixture_renders_as_hugging_face_renders_it(
    name: str, conversation: str
) -> None:
    assert _ours(name, conversation) == _reference(name, conversation)


def test_every_fixture_renders_every_conversation_identically() -> None:
    pairs = [(name, case) for name in TEMPLATES for case in CONVERSATIONS]
    same = sum(_ours(name, case) == _reference(name, case) for name, case in pairs)
    print(f"{same} of {len(pairs)} fixture renders identical to the reference")
    assert len(TEMPLATES) == 6
    assert same == len(pairs)


def test_a_key_a_message_lacks_is_undefined_not_an_error() -> None:
    # Qwen-style templates test message.tool_calls on every message.
    text = _ours("chatml_tools", "multi_turn")
    assert "<|im_start|>assistant\nHello! <b>ok</b><|im_end|>" in text


def test_strftime_now_gives_the_templates_today() -> None:
    text = _ours("llama3_tools", "one_user_turn")
    assert "Today: " + datetime.now().strftime("%d %b %Y") in text
    assert "01 Jan 2024" not in text


def test_loop_controls_break_and_continue() -> None:
    template = ChatTemplate(
        "{% for m in messages %}{% if m.role == 'system' %}{% continue %}{% endif %}"
        "{% if loop.index > 2 %}{% break %}{% endif %}[{{ m.content }}]{% endfor %}"
    )
    messages = [{"role": "system", "content": "s"}] + [
        {"role": "user", "content": str(i)} for i in range(5)
    ]
    assert template.render(messages, add_generation_prompt=False) == "[0]"


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("{'b': 'é', 'a': '<x>'} | tojson", '{"b": "é", "a": "<x>"}'),
        ("{'b': 'é'} | tojson(ensure_ascii=true)", '{"b": "\\u00e9"}'),
        ("{'b': 1, 'a': 2} | tojson(sort_keys=true)", '{"a": 2, "b": 1}'),
        ("{'a': [1, 2]} | tojson(separators=(',', ':'))", '{"a":[1,2]}'),
        ("{'a': 1} | tojson(indent=2)", '{\n  "a": 1\n}'),
    ],
)
def test_tojson_takes_hugging_faces_options(expression: str, expected: str) -> None:
    template = ChatTemplate("{{ " + expression + " }}")
    assert template.render([], add_generation_prompt=False) == expected


def test_generation_block_writes_its_body() -> None:
    text = _ours("gemma_generation", "multi_turn")
    assert "<start_of_turn>model\nHello! <b>ok</b><end_of_turn>\n" in text


def test_documents_reach_the_template() -> None:
    documents = [{"title": f"Doc {i}", "text": "Grüße"} for i in range(5)]
    text = ChatTemplate(_source("gemma_generation")).render(
        [{"role": "user", "content": "Summarize"}],
        add_generation_prompt=True,
        documents=documents,
    )
    assert 'Document 1: {"title": "Doc 0", "text": "Gr\\u00fc\\u00dfe"}' in text
    # The template stops at three documents with {% break %}.
    assert "Document 3:" in text and "Document 4:" not in text


def test_enable_thinking_is_defined_only_when_given() -> None:
    template = ChatTemplate(_source("chatml_tools"))
    messages = [{"role": "user", "content": "Hi"}]
    off = template.render(messages, add_generation_prompt=True, enable_thinking=False)
    on = template.render(messages, add_generation_prompt=True, enable_thinking=True)
    unset = template.render(messages, add_generation_prompt=True)
    assert off.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert on.endswith("<|im_start|>assistant\n")
    assert unset == on


def test_chat_template_kwargs_become_variables() -> None:
    template = ChatTemplate(_source("harmony_tools"))
    messages = [{"role": "user", "content": "Hi"}]
    text = template.render(
        messages, add_generation_prompt=True, extra={"reasoning_effort": "high"}
    )
    assert "Reasoning: high" in text
    default = template.render(messages, add_generation_prompt=True)
    assert "Reasoning: medium" in default


def test_chat_template_kwargs_may_override_thinking() -> None:
    template = ChatTemplate(_source("chatml_tools"))
    text = template.render(
        [{"role": "user", "content": "Hi"}],
        add_generation_prompt=True,
        enable_thinking=True,
        extra={"enable_thinking": False},
    )
    assert text.endswith("<think>\n\n</think>\n\n")


@pytest.mark.parametrize("name", ["messages", "tools", "documents"])
def test_chat_template_kwargs_may_not_replace_the_request(name: str) -> None:
    with pytest.raises(ChatTemplateError, match=f"may not set '{name}'"):
        ChatTemplate("x").render([], add_generation_prompt=True, extra={name: []})


def test_tool_call_arguments_reach_the_template_as_a_mapping() -> None:
    text = _ours("llama3_tools", "tool_call_and_result")
    assert '"parameters": {"city": "Zürich", "unit": "celsius"}' in text
    template = ChatTemplate(
        "{% for k, v in messages[0].tool_calls[0].function.arguments.items() %}"
        "{{ k }}={{ v }};{% endfor %}"
    )
    messages: list[dict[str, Any]] = [
        {"role": "assistant", "tool_calls": [_call('{"a": 1, "b": "x"}')]}
    ]
    assert template.render(messages, add_generation_prompt=False) == "a=1;b=x;"
    # The caller's message keeps its text.
    assert messages[0]["tool_calls"][0]["function"]["arguments"] == '{"a": 1, "b": "x"}'


def test_tool_call_arguments_that_are_not_an_object_stay_text() -> None:
    template = ChatTemplate("{{ messages[0].tool_calls[0].function.arguments }}")
    messages = [{"role": "assistant", "tool_calls": [_call("not json")]}]
    assert template.render(messages, add_generation_prompt=False) == "not json"


def test_undefined_values_still_fail_when_used_as_what_they_are_not() -> None:
    with pytest.raises(ChatTemplateError, match=r"has no attribute 'nothing'"):
        ChatTemplate("{{ messages[0].nothing.deeper }}").render(
            [{"role": "user", "content": "x"}], add_generation_prompt=False
        )


@pytest.mark.parametrize(
    "source",
    [
        # Each builds a string of a gigabyte or more in one operation.
        "{{ 'a' | center(1000000000) }}",
        "{{ 'a'.center(1000000000) }}",
        "{{ 'a'.ljust(1000000000) }}",
        "{{ '{:>900000000}'.format(1) }}",
        "{{ '%900000000d' % 1 }}",
        "{{ '%*d' % (900000000, 1) }}",
        "{{ '%900000000s' | format('x') }}",
        "{{ range(100000) | join('x' * 100000) }}",
        "{{ range(100000) | map('string') | join('x' * 100000) }}",
        "{{ ('a' * 1000000) | replace('a', 'b' * 1000) }}",
        "{{ ('a\n' * 100000) | indent(100000) }}",
        "{{ [1] | batch(1000000000, 0) | list }}",
        "{{ {'a': 1} | tojson(indent=900000000) }}",
        "{{ strftime_now('%900000000Y') }}",
        "{% set ns = namespace(s='ab') %}{% for i in range(60) %}"
        "{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
    ],
)
def test_a_template_cannot_build_a_huge_value_in_one_step(source: str) -> None:
    with pytest.raises(ChatTemplateError, match="exceed"):
        ChatTemplate(source).render([], add_generation_prompt=True)
