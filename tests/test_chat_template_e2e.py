"""Chat templates on a real agent: tools, the default system prompt, errors.

The agent renders with a template override that writes the tools out and
refuses a conversation with a tool turn.  What it generates for
a conversation must equal what it generates for the same text rendered here
and sent as a raw prompt: then the agent rendered exactly that text.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from paddler_client.client_inference import ClientInference
from paddler_client.continue_from_conversation_history_params import (
    ContinueFromConversationHistoryParams,
)
from paddler_client.conversation_message import ConversationMessage
from paddler_client.inference_message import InferenceMessageKind
from paddler_client.tool import Function, Tool

from balancer.chat_template import GEMMA_CHAT_TEMPLATE, ChatTemplate
from tests.support.fleet import running_platform
from tests.support.streams import read_ndjson, stream_text
from tests.support.web import WebServer

SYSTEM_PROMPT = "You answer in one short sentence."
TOOLS_TEMPLATE = (
    "{% for message in messages if message['role'] == 'tool' %}"
    "{{ raise_exception('this template has no tool turns') }}"
    "{% endfor %}"
    "{{ bos_token }}"
    "{% if tools %}<start_of_turn>user\nYou may call these tools:\n"
    "{% for tool in tools %}"
    "- {{ tool['function']['name'] }}: {{ tool['function']['description'] }}\n"
    "{% endfor %}<end_of_turn>\n{% endif %}"
    + GEMMA_CHAT_TEMPLATE.removeprefix("{{ bos_token }}")
)
TOOLS: Any = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city today.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]
QUESTION: Any = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def template_platform(
    tmp_path_factory: pytest.TempPathFactory, greedy_state: dict[str, Any]
) -> Iterator[WebServer]:
    state = {
        **greedy_state,
        "chat_template_override": {"content": TOOLS_TEMPLATE},
        "default_system_prompt": SYSTEM_PROMPT,
    }
    with running_platform(
        tmp_path_factory.mktemp("templates"), state, agent_name="templater"
    ) as web:
        yield web


def generate(web: WebServer, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    with httpx.stream("POST", f"{web.url}{path}", json=body, timeout=60) as response:
        assert response.status_code == 200, response.read()
        return read_ndjson(response)


def usage(lines: list[dict[str, Any]]) -> dict[str, Any]:
    done: dict[str, Any] = lines[-1]["Response"]["response"]["GeneratedToken"]["Done"]
    return dict(done["usage"])


def rendered(messages: list[dict[str, Any]], tools: Any = None) -> str:
    return ChatTemplate(TOOLS_TEMPLATE, bos_token="<bos>").render(
        messages, add_generation_prompt=True, tools=tools
    )


def as_raw_prompt(web: WebServer, text: str) -> list[dict[str, Any]]:
    return generate(
        web, "/api/v1/continue_from_raw_prompt", {"raw_prompt": text, "max_tokens": 12}
    )


def test_tools_and_the_default_system_prompt_are_rendered_into_the_prompt(
    template_platform: WebServer,
) -> None:
    lines = generate(
        template_platform,
        "/api/v1/continue_from_conversation_history",
        {"conversation_history": QUESTION, "tools": TOOLS, "max_tokens": 12},
    )
    text = rendered([{"role": "system", "content": SYSTEM_PROMPT}, *QUESTION], TOOLS)
    assert "get_weather: The weather in a city today." in text
    assert SYSTEM_PROMPT in text
    reference = as_raw_prompt(template_platform, text)
    assert stream_text(lines) == stream_text(reference)
    assert usage(lines)["prompt_tokens"] == usage(reference)["prompt_tokens"]
    without_tools = generate(
        template_platform,
        "/api/v1/continue_from_conversation_history",
        {"conversation_history": QUESTION, "max_tokens": 1},
    )
    assert usage(without_tools)["prompt_tokens"] < usage(lines)["prompt_tokens"]


def test_a_conversation_with_its_own_system_prompt_keeps_it(
    template_platform: WebServer,
) -> None:
    history = [{"role": "system", "content": "Be verbose."}, *QUESTION]
    lines = generate(
        template_platform,
        "/api/v1/continue_from_conversation_history",
        {"conversation_history": history, "max_tokens": 12},
    )
    reference = as_raw_prompt(template_platform, rendered(history))
    assert usage(lines)["prompt_tokens"] == usage(reference)["prompt_tokens"]
    assert stream_text(lines) == stream_text(reference)


async def test_official_clients_send_tools_that_reach_the_template(
    template_platform: WebServer,
) -> None:
    params = ContinueFromConversationHistoryParams(
        add_generation_prompt=True,
        conversation_history=[ConversationMessage(**m) for m in QUESTION],
        enable_thinking=False,
        max_tokens=12,
        tools=[Tool(function=Function(**TOOLS[0]["function"]))],
    )
    async with ClientInference(template_platform.url) as client:
        stream = await client.continue_from_conversation_history(params)
        messages = [message async for message in stream]
    async with openai.AsyncOpenAI(
        base_url=f"{template_platform.url}/v1", api_key="unused", max_retries=0
    ) as openai_client:
        completion = await openai_client.chat.completions.create(
            model="any", messages=QUESTION, tools=TOOLS, max_tokens=12
        )
    text = rendered([{"role": "system", "content": SYSTEM_PROMPT}, *QUESTION], TOOLS)
    reference = as_raw_prompt(template_platform, text)
    socket_text = "".join(m.token or "" for m in messages if m.is_token)
    assert socket_text == stream_text(reference)
    assert completion.choices[0].message.content == stream_text(reference)
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == usage(reference)["prompt_tokens"]


async def test_a_template_error_ends_the_stream_with_chat_template_error(
    template_platform: WebServer,
) -> None:
    history: Any = [*QUESTION, {"role": "tool", "content": "Sunny."}]
    lines = generate(
        template_platform,
        "/api/v1/continue_from_conversation_history",
        {"conversation_history": history, "max_tokens": 4},
    )
    assert len(lines) == 1
    error = lines[0]["Response"]["response"]["GeneratedToken"]["ChatTemplateError"]
    assert "has no tool turns" in error
    params = ContinueFromConversationHistoryParams(
        add_generation_prompt=True,
        conversation_history=[ConversationMessage(**m) for m in history],
        enable_thinking=False,
        max_tokens=4,
    )
    async with ClientInference(template_platform.url) as client:
        stream = await client.continue_from_conversation_history(params)
        messages = [message async for message in stream]
    assert [m.kind for m in messages] == [InferenceMessageKind.CHAT_TEMPLATE_ERROR]
    async with openai.AsyncOpenAI(
        base_url=f"{template_platform.url}/v1", api_key="unused", max_retries=0
    ) as openai_client:
        with pytest.raises(openai.BadRequestError) as raised:
            await openai_client.chat.completions.create(
                model="any", messages=history, max_tokens=4
            )
    assert raised.value.code == "chat_template_error"
    assert "has no tool turns" in raised.value.message
