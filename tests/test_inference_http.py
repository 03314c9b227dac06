"""The inference API end to end: daphne, Redis, a real agent, the real model."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from balancer.chat_template import GEMMA_CHAT_TEMPLATE, ChatTemplate
from tests.support.fleet import running_platform
from tests.support.streams import read_ndjson, stream_text
from tests.support.web import WebServer


@pytest.fixture
def fresh_platform(tmp_path: Path, greedy_state: dict[str, Any]) -> Iterator[WebServer]:
    """An agent whose slots hold nothing yet.

    A slot that reuses a cached prefix evaluates the rest of the prompt in a
    smaller batch, and llama.cpp's results are not bit-identical across batch
    shapes: a near-tie in the greedy output can flip.  The comparisons with
    llama-cpp-python evaluate the whole prompt at once, as the reference does.
    """
    with running_platform(tmp_path, greedy_state, agent_name="agent-fresh") as web:
        yield web


@pytest.fixture(scope="module")
def reference_llama(model_path: Path) -> Iterator[Any]:
    """llama-cpp-python's high-level API, called directly: the reference.

    Flash attention is on, as in agents (llama.cpp's "auto" turns it on for the
    CPU); the two attention kernels round differently, which can flip a greedy
    choice on this small model.
    """
    import llama_cpp

    llm = llama_cpp.Llama(
        str(model_path),
        n_ctx=2048,
        n_threads=2,
        flash_attn=True,
        verbose=False,
        seed=0,
    )
    yield llm
    llm.close()


def reference_completion(llm: Any, prompt: str | list[int], max_tokens: int) -> str:
    # Evaluate the whole prompt in one batch, as a fresh slot does, instead
    # of reusing whatever prefix the previous reference call left behind.
    llm.reset()
    result = llm.create_completion(
        prompt, max_tokens=max_tokens, temperature=0.0, repeat_penalty=1.0
    )
    text: str = result["choices"][0]["text"]
    return text


def post_stream(
    web: WebServer, path: str, body: dict[str, Any]
) -> list[dict[str, Any]]:
    with httpx.stream("POST", f"{web.url}{path}", json=body, timeout=60) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"] == "application/json"
        return read_ndjson(response)


def test_health_answers_ok(web: WebServer) -> None:
    response = httpx.get(f"{web.url}/health")
    assert response.status_code == 200
    assert response.text == "OK"


def test_raw_prompt_streams_what_llama_cpp_generates_greedily(
    fresh_platform: WebServer, reference_llama: Any
) -> None:
    prompt = "The three primary colors are"
    lines = post_stream(
        fresh_platform,
        "/api/v1/continue_from_raw_prompt",
        {"raw_prompt": prompt, "max_tokens": 32},
    )
    expected = reference_completion(reference_llama, prompt, 32)
    assert expected  # the model says something
    assert stream_text(lines) == expected
    token_lines = [line for line in lines[:-1] if "Response" in line]
    # Streamed token by token, each line a ContentToken from the agent.
    assert len(token_lines) >= 16
    for line in token_lines:
        assert line["Response"]["generated_by"] == "agent-fresh"
        assert "ContentToken" in line["Response"]["response"]["GeneratedToken"]


def test_stream_ends_with_done_and_exact_usage(
    platform: WebServer, reference_llama: Any
) -> None:
    prompt = "Once upon a time"
    lines = post_stream(
        platform,
        "/api/v1/continue_from_raw_prompt",
        {"raw_prompt": prompt, "max_tokens": 7},
    )
    done = lines[-1]["Response"]["response"]["GeneratedToken"]["Done"]
    prompt_tokens = len(reference_llama.tokenize(prompt.encode(), special=True))
    assert done["usage"]["prompt_tokens"] == prompt_tokens
    assert done["usage"]["content_tokens"] == 7
    request_ids = {line["Response"]["request_id"] for line in lines}
    assert len(request_ids) == 1


def test_conversation_history_is_rendered_with_the_override_template(
    fresh_platform: WebServer, reference_llama: Any
) -> None:
    history = [{"role": "user", "content": "Name a fruit that is yellow."}]
    lines = post_stream(
        fresh_platform,
        "/api/v1/continue_from_conversation_history",
        {
            "conversation_history": history,
            "add_generation_prompt": True,
            "enable_thinking": False,
            "max_tokens": 24,
        },
    )
    rendered = ChatTemplate(GEMMA_CHAT_TEMPLATE, bos_token="<bos>").render(
        history, add_generation_prompt=True
    )
    assert rendered.endswith("<start_of_turn>model\n")
    # The template writes <bos> itself, as a special token: one BOS, not two.
    tokens = reference_llama.tokenize(rendered.encode(), add_bos=False, special=True)
    assert tokens[0] == reference_llama.token_bos() != tokens[1]
    expected = reference_completion(reference_llama, tokens, 24)
    assert stream_text(lines) == expected
    usage = lines[-1]["Response"]["response"]["GeneratedToken"]["Done"]["usage"]
    assert usage["prompt_tokens"] == len(tokens)


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("continue_from_raw_prompt", {"max_tokens": 5}, "raw_prompt"),
        (
            "continue_from_raw_prompt",
            {"raw_prompt": "x", "max_tokens": 0},
            "max_tokens",
        ),
        (
            "continue_from_raw_prompt",
            {"raw_prompt": "x", "max_tokens": 5, "colour": "red"},
            "colour",
        ),
        (
            "continue_from_conversation_history",
            {"conversation_history": [], "max_tokens": 5},
            "conversation_history",
        ),
        (
            "continue_from_conversation_history",
            {"conversation_history": [{"role": "wizard", "content": "hi"}]}
            | {"max_tokens": 5},
            "conversation_history[0].role",
        ),
    ],
)
def test_invalid_request_gets_400_naming_the_field(
    web: WebServer, path: str, body: dict[str, Any], field: str
) -> None:
    response = httpx.post(f"{web.url}/api/v1/{path}", json=body)
    assert response.status_code == 400
    assert response.json()["error"]["description"].startswith(f"{field}:")


def test_malformed_json_gets_400(web: WebServer) -> None:
    response = httpx.post(
        f"{web.url}/api/v1/continue_from_raw_prompt", content=b"{not json"
    )
    assert response.status_code == 400
    assert "not valid JSON" in response.json()["error"]["description"]
