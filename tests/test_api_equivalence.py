"""One prompt, three surfaces: greedy output is identical on all of them.

HTTP NDJSON, the inference socket (official paddler client) and the OpenAI API
(official openai client) translate to the same agent request, so the greedy
demo agent must generate the same text, token for token, on each.
"""

from __future__ import annotations

from typing import Any

import httpx
import openai
from paddler_client.client_inference import ClientInference
from paddler_client.continue_from_conversation_history_params import (
    ContinueFromConversationHistoryParams,
)
from paddler_client.continue_from_raw_prompt_params import (
    ContinueFromRawPromptParams,
)
from paddler_client.conversation_message import ConversationMessage

from tests.support.streams import read_ndjson, stream_text
from tests.support.web import WebServer

HISTORY: Any = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What do bees make?"},
]
# Prompts whose greedy continuation has no near-tie.  The agent reuses a slot's
# cached prefix and then evaluates the prompt's last token alone; llama.cpp's
# logits are not bit-identical across batch sizes, so a near-tie (say "A list
# of planets: Mercury, Venus,") can flip between two runs on the same surface.
PROMPT = "Water boils at a temperature of"
TOKENS = 20


def ndjson_text(web: WebServer, path: str, body: dict[str, Any]) -> str:
    with httpx.stream("POST", f"{web.url}{path}", json=body, timeout=60) as response:
        assert response.status_code == 200, response.read()
        return stream_text(read_ndjson(response))


async def test_greedy_chat_is_identical_over_http_socket_and_openai(
    api_platform: WebServer,
) -> None:
    over_http = ndjson_text(
        api_platform,
        "/api/v1/continue_from_conversation_history",
        {"conversation_history": HISTORY, "max_tokens": TOKENS},
    )
    params = ContinueFromConversationHistoryParams(
        add_generation_prompt=True,
        conversation_history=[ConversationMessage(**m) for m in HISTORY],
        enable_thinking=False,
        max_tokens=TOKENS,
    )
    async with ClientInference(api_platform.url) as client:
        stream = await client.continue_from_conversation_history(params)
        over_socket = "".join([m.token or "" async for m in stream if m.is_token])
    async with openai.AsyncOpenAI(
        base_url=f"{api_platform.url}/v1", api_key="unused", max_retries=0
    ) as openai_client:
        completion = await openai_client.chat.completions.create(
            model="any", messages=HISTORY, max_tokens=TOKENS
        )
    assert over_http
    assert over_socket == over_http
    assert completion.choices[0].message.content == over_http


async def test_greedy_completion_is_identical_over_http_socket_and_openai(
    api_platform: WebServer,
) -> None:
    over_http = ndjson_text(
        api_platform,
        "/api/v1/continue_from_raw_prompt",
        {"raw_prompt": PROMPT, "max_tokens": TOKENS},
    )
    async with ClientInference(api_platform.url) as client:
        stream = await client.continue_from_raw_prompt(
            ContinueFromRawPromptParams(raw_prompt=PROMPT, max_tokens=TOKENS)
        )
        over_socket = "".join([m.token or "" async for m in stream if m.is_token])
    async with openai.AsyncOpenAI(
        base_url=f"{api_platform.url}/v1", api_key="unused", max_retries=0
    ) as openai_client:
        completion = await openai_client.completions.create(
            model="any", prompt=PROMPT, max_tokens=TOKENS
        )
    assert over_http
    assert over_socket == over_http
    assert completion.choices[0].text == over_http
