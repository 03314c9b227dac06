"""What holds on every inference surface alike.

One prompt, three surfaces: greedy output is identical on all of them.  HTTP
NDJSON, the inference socket (official paddler client) and the OpenAI API
(official openai client) translate to the same agent request, so the greedy
demo agent must generate the same text, token for token, on each.

Requests no agent takes: 503 when the buffer is full, 504 when it waited too
long, as Error envelopes keyed by the client's id on the socket and in
OpenAI's shape on /v1 (no agent runs for these at all).

A client that goes away cancels its request on the agent and frees the slot,
on Paddler's HTTP API and OpenAI's alike.  Both slots of the test agent are
kept busy with long generations; one client then disconnects.  Its slot claim
must go within a second, and a new request is served only if the agent really
stopped the abandoned generation (it would otherwise go on for minutes while
the new request waits for a slot).  The stream's own side of cancellation,
in-process, is in ``test_stream.py``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import openai
import pytest
import websockets
from paddler_client.client_inference import ClientInference
from paddler_client.continue_from_conversation_history_params import (
    ContinueFromConversationHistoryParams,
)
from paddler_client.continue_from_raw_prompt_params import (
    ContinueFromRawPromptParams,
)
from paddler_client.conversation_message import ConversationMessage

from tests.support.constants import ENDLESS_PROMPT
from tests.support.processes import stop_process
from tests.support.redis_server import RedisServer, start_redis
from tests.support.slots import (
    FIRST_TOKEN_BUDGET_S,
    REPORT_LAG_S,
    claimed_slots,
    seconds_to_first_token,
    wait_for_claims,
    wait_for_idle_slots,
)
from tests.support.streams import read_ndjson, stream_text
from tests.support.web import WebServer, socket_url, start_web

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


@pytest.fixture(scope="module")
def empty_fleet() -> Iterator[RedisServer]:
    server = start_redis()
    yield server
    stop_process(server.process)


@pytest.fixture(scope="module")
def no_buffer(
    empty_fleet: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WebServer]:
    web = start_web(
        empty_fleet.url,
        tmp_path_factory.mktemp("no-buffer"),
        PADDLER_MAX_BUFFERED_REQUESTS="0",
    )
    yield web
    web.stop()


@pytest.fixture(scope="module")
def short_buffer(
    empty_fleet: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WebServer]:
    web = start_web(
        empty_fleet.url,
        tmp_path_factory.mktemp("short-buffer"),
        PADDLER_BUFFERED_REQUEST_TIMEOUT_MS="300",
    )
    yield web
    web.stop()


REQUEST = json.dumps(
    {
        "Request": {
            "id": "mine",
            "request": {"ContinueFromRawPrompt": {"raw_prompt": "Hi", "max_tokens": 2}},
        }
    }
)


@pytest.mark.parametrize(
    ("server", "code", "description"),
    [
        ("no_buffer", 503, "Buffered requests overflow"),
        ("short_buffer", 504, "Waiting for available slot timed out"),
    ],
)
async def test_socket_request_no_agent_takes_ends_with_an_error_envelope(
    request: pytest.FixtureRequest, server: str, code: int, description: str
) -> None:
    web: WebServer = request.getfixturevalue(server)
    async with websockets.connect(socket_url(web)) as socket:
        await socket.send(REQUEST)
        envelope = json.loads(await socket.recv())
    assert envelope == {
        "Error": {
            "request_id": "mine",
            "error": {"code": code, "description": description},
        }
    }


@pytest.mark.parametrize(
    ("server", "code"), [("no_buffer", 503), ("short_buffer", 504)]
)
def test_openai_request_no_agent_takes_gets_an_openai_error(
    request: pytest.FixtureRequest, server: str, code: int
) -> None:
    web: WebServer = request.getfixturevalue(server)
    response = httpx.post(
        f"{web.url}/v1/chat/completions",
        json={"model": "m", "messages": [{"role": "user", "content": "Hi"}]},
        timeout=10,
    )
    assert response.status_code == code
    assert response.json()["error"]["type"] == "server_error"


@contextmanager
def long_stream(
    web: WebServer, path: str, body: dict[str, Any]
) -> Iterator[Iterator[str]]:
    """A long streaming request; leaving the block drops the connection."""
    # A client of its own: closing it closes the TCP connection for sure.
    with (
        httpx.Client(timeout=60) as client,
        client.stream("POST", f"{web.url}{path}", json=body) as response,
    ):
        assert response.status_code == 200, response.read()
        yield response.iter_lines()


def ndjson_body(index: int) -> dict[str, Any]:
    return {"raw_prompt": f"{ENDLESS_PROMPT} {index}", "max_tokens": 2000}


def openai_body(index: int) -> dict[str, Any]:
    return {
        "model": "any",
        "prompt": f"{ENDLESS_PROMPT} {index}",
        "max_tokens": 2000,
        "stream": True,
    }


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/v1/continue_from_raw_prompt", ndjson_body),
        ("/v1/completions", openai_body),
    ],
)
def test_http_disconnect_frees_the_slot_within_a_second(
    api_platform: WebServer, api_redis: RedisServer, path: str, body: Any
) -> None:
    with long_stream(api_platform, path, body(1)) as other:
        next(other)
        with long_stream(api_platform, path, body(2)) as lines:
            next(lines)
            next(lines)
            assert claimed_slots(api_redis) == 2
        wait_for_claims(api_redis, 1, timeout=1.0)
        # The only free slot is the one the dropped request held.
        assert seconds_to_first_token(api_platform) < FIRST_TOKEN_BUDGET_S
    wait_for_claims(api_redis, 0, timeout=1.0)
    wait_for_idle_slots(api_platform, REPORT_LAG_S)


def test_non_streaming_client_that_gives_up_frees_the_slot(
    api_platform: WebServer, api_redis: RedisServer
) -> None:
    with long_stream(
        api_platform, "/api/v1/continue_from_raw_prompt", ndjson_body(1)
    ) as other:
        next(other)
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(
                f"{api_platform.url}/v1/completions",
                json={**openai_body(2), "stream": False},
                timeout=1.5,
            )
        wait_for_claims(api_redis, 1, timeout=1.0)
        assert seconds_to_first_token(api_platform) < FIRST_TOKEN_BUDGET_S
    wait_for_idle_slots(api_platform, REPORT_LAG_S)
