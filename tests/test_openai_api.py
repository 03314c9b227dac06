"""The OpenAI-compatible API end to end, driven by the official ``openai`` client.

The agent serves the demo model greedily (temperature 0 in the desired state),
so a request without sampling fields must give exactly what the Paddler
endpoints give for the same prompt.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.support.streams import read_ndjson, stream_text
from tests.support.web import WebServer

MODEL = "gemma3-270m-q4_k_m"
# Any: the client's TypedDicts would reject plain dict literals.
QUESTION: Any = [{"role": "user", "content": "Name a fruit that is yellow."}]
POEM: Any = [{"role": "user", "content": "Write a short poem about the sea."}]


@pytest.fixture(scope="module")
def client(api_platform: WebServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=f"{api_platform.url}/v1", api_key="unused", max_retries=0, timeout=60
    ) as client:
        yield client


def paddler_text(web: WebServer, path: str, body: dict[str, Any]) -> str:
    with httpx.stream("POST", f"{web.url}{path}", json=body, timeout=60) as response:
        assert response.status_code == 200, response.read()
        return stream_text(read_ndjson(response))


def chat_text(client: openai.OpenAI, **fields: Any) -> str:
    completion = client.chat.completions.create(model=MODEL, **fields)
    return completion.choices[0].message.content or ""


def test_models_lists_the_model_the_agents_serve(client: openai.OpenAI) -> None:
    assert [model.id for model in client.models.list()] == [MODEL]
    model = client.models.retrieve(MODEL)
    assert (model.id, model.object, model.owned_by) == (MODEL, "model", "paddler")
    with pytest.raises(openai.NotFoundError) as raised:
        client.models.retrieve("gpt-17")
    assert raised.value.code == "model_not_found"


def test_chat_completion_is_what_the_paddler_endpoint_generates(
    api_platform: WebServer, client: openai.OpenAI
) -> None:
    # Both requests below then find the prompt in a slot's cache and evaluate
    # it the same way (a fresh prompt and a cached one can differ in a near-tie).
    paddler_text(
        api_platform,
        "/api/v1/continue_from_conversation_history",
        {"conversation_history": QUESTION, "max_tokens": 1},
    )
    completion = client.chat.completions.create(
        model=MODEL, messages=QUESTION, max_tokens=16
    )
    expected = paddler_text(
        api_platform,
        "/api/v1/continue_from_conversation_history",
        {"conversation_history": QUESTION, "max_tokens": 16},
    )
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == expected
    assert choice.finish_reason == "length"
    assert completion.model == MODEL
    assert completion.object == "chat.completion"
    assert completion.id.startswith("chatcmpl-")
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 16
    assert completion.usage.prompt_tokens > 10
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + 16


def test_streamed_chat_completion_ends_with_usage_and_done(
    client: openai.OpenAI,
) -> None:
    whole = chat_text(client, messages=QUESTION, max_tokens=12)
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=QUESTION,
            max_tokens=12,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert len([p for p in pieces if p]) > 3  # streamed, not in one piece
    assert "".join(pieces) == whole
    assert chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 12
    assert len({c.id for c in chunks}) == 1


def test_stream_is_server_sent_events_ending_with_done(api_platform: WebServer) -> None:
    with httpx.stream(
        "POST",
        f"{api_platform.url}/v1/chat/completions",
        json={"model": MODEL, "messages": QUESTION, "max_tokens": 3, "stream": True},
        timeout=60,
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in events)
    assert events[-1] == "data: [DONE]"
    assert json.loads(events[-2][6:])["choices"][0]["finish_reason"] == "length"


async def test_async_client_streams_a_chat_completion(api_platform: WebServer) -> None:
    async with openai.AsyncOpenAI(
        base_url=f"{api_platform.url}/v1", api_key="unused", max_retries=0
    ) as client:
        stream = await client.chat.completions.create(
            model=MODEL, messages=QUESTION, max_tokens=8, stream=True
        )
        pieces = [c.choices[0].delta.content or "" async for c in stream]
        completion = await client.chat.completions.create(
            model=MODEL, messages=QUESTION, max_tokens=8
        )
    assert "".join(pieces) == completion.choices[0].message.content


def test_text_completion_is_what_the_raw_prompt_endpoint_generates(
    api_platform: WebServer, client: openai.OpenAI
) -> None:
    prompt = "The capital of France is"
    # As above: every request below finds the prompt cached.
    paddler_text(
        api_platform,
        "/api/v1/continue_from_raw_prompt",
        {"raw_prompt": prompt, "max_tokens": 1},
    )
    completion = client.completions.create(model=MODEL, prompt=prompt, max_tokens=10)
    expected = paddler_text(
        api_platform,
        "/api/v1/continue_from_raw_prompt",
        {"raw_prompt": prompt, "max_tokens": 10},
    )
    assert completion.choices[0].text == expected
    assert completion.choices[0].finish_reason == "length"
    assert completion.object == "text_completion"
    streamed = client.completions.create(
        model=MODEL, prompt=prompt, max_tokens=10, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed) == expected


def test_text_completion_defaults_to_16_tokens(client: openai.OpenAI) -> None:
    completion = client.completions.create(model=MODEL, prompt="Once upon a time")
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 16


def test_same_seed_samples_the_same_text_and_other_seeds_differ(
    client: openai.OpenAI,
) -> None:
    def sample(seed: int) -> str:
        return chat_text(
            client, messages=POEM, max_tokens=20, temperature=1.0, seed=seed
        )

    first = sample(7)
    assert sample(7) == first
    others = {sample(seed) for seed in (8, 9, 10)}
    assert others - {first}
    greedy = chat_text(client, messages=POEM, max_tokens=20)
    assert {first, *others} - {greedy}  # the temperature was honoured


def test_top_p_near_zero_leaves_only_the_likeliest_token(
    client: openai.OpenAI,
) -> None:
    greedy = chat_text(client, messages=POEM, max_tokens=20)
    for seed in (8, 9):
        assert (
            chat_text(
                client,
                messages=POEM,
                max_tokens=20,
                temperature=1.5,
                top_p=0.0,
                seed=seed,
            )
            == greedy
        )


def test_stop_sequence_truncates_the_text(client: openai.OpenAI) -> None:
    prompt = "The capital of France is"
    full = client.completions.create(model=MODEL, prompt=prompt, max_tokens=12)
    text = full.choices[0].text
    stop = text.split()[3]  # a word well inside the text
    cut = client.completions.create(
        model=MODEL, prompt=prompt, max_tokens=12, stop=stop
    )
    assert cut.choices[0].text == text[: text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    chat_full = chat_text(client, messages=QUESTION, max_tokens=16)
    chat_stop = chat_full.split()[2]
    assert (
        chat_text(client, messages=QUESTION, max_tokens=16, stop=[chat_stop, "zzz"])
        == chat_full[: chat_full.index(chat_stop)]
    )


def test_json_schema_response_format_is_enforced(client: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {
            "answer": {"type": "string", "enum": ["yes", "no"]},
            "confidence": {"type": "integer"},
        },
        "required": ["answer", "confidence"],
        "additionalProperties": False,
    }
    completion = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Is the sky blue? Answer in JSON."}],
        max_tokens=40,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "verdict", "schema": schema, "strict": True},
        },
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "stop"
    answer = json.loads(choice.message.content or "")
    assert set(answer) == {"answer", "confidence"}
    assert answer["answer"] in ("yes", "no")
    assert isinstance(answer["confidence"], int)


def test_json_object_response_format_ends_the_answer_with_the_object(
    client: openai.OpenAI,
) -> None:
    ask = {"role": "user", "content": "Give a JSON object."}
    messages: Any = [
        ask,
        {"role": "assistant", "content": '{"a": 1}'},
        ask,
        {"role": "assistant", "content": '{"b": 2}'},
        ask,
    ]
    free = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=30)
    # Unconstrained, this small model rambles on after its object.
    with pytest.raises(json.JSONDecodeError):
        json.loads(free.choices[0].message.content or "")
    constrained = client.chat.completions.create(
        model=MODEL,
        messages=messages,
        max_tokens=30,
        response_format={"type": "json_object"},
    )
    choice = constrained.choices[0]
    assert choice.finish_reason == "stop"
    assert isinstance(json.loads(choice.message.content or ""), dict)


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
        ({"messages": QUESTION, "temperature": 3}, "temperature"),
        ({"messages": QUESTION, "max_tokens": 0}, "max_tokens"),
        ({"messages": QUESTION, "n": 2}, "n"),
        ({"messages": QUESTION, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        (
            {"messages": QUESTION, "response_format": {"type": "yaml"}},
            "response_format.type",
        ),
        ({"messages": QUESTION, "extra_body": {"colour": "red"}}, "colour"),
    ],
)
def test_invalid_chat_request_gets_400_in_openai_shape(
    client: openai.OpenAI, fields: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model=MODEL, **fields)
    error = raised.value
    assert error.status_code == 400
    assert error.param == param
    assert error.type == "invalid_request_error"
    assert isinstance(error.body, dict)
    assert set(error.body) == {"message", "type", "param", "code"}


def test_error_body_has_the_openai_shape(api_platform: WebServer) -> None:
    response = httpx.post(
        f"{api_platform.url}/v1/completions", content=b"{oops", timeout=10
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"


def test_deeply_nested_body_gets_400(api_platform: WebServer) -> None:
    body = b'{"model": "m", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    response = httpx.post(
        f"{api_platform.url}/v1/chat/completions", content=body, timeout=10
    )
    assert response.status_code == 400
    assert response.json()["error"]["message"] == "The body is nested too deeply."


def test_embeddings_need_an_agent_with_embeddings_enabled(
    client: openai.OpenAI,
) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client.embeddings.create(model=MODEL, input="text")
    assert "enable_embeddings" in raised.value.message
