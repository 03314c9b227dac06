"""OpenAI requests translated for the agents, and agent output folded back."""

from __future__ import annotations

import base64
import json
import struct
from typing import Any

import pytest

from balancer.contract import OutputItem, Usage
from inference.openai.errors import OpenAIError
from inference.openai.listing import model_id, model_id_of_source
from inference.openai.output import (
    EmbeddingResults,
    Finished,
    TextPiece,
    read_generation_item,
)
from inference.openai.requests import (
    JSON_OBJECT_GBNF,
    parse_chat_request,
    parse_completion_request,
    parse_embedding_request,
)
from inference.openai.responses import Reply, embedding_list
from inference.validation import MAX_TOKENS_LIMIT

USER = {"role": "user", "content": "hi"}


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [USER], **fields}


def test_chat_request_becomes_the_conversation_the_paddler_endpoint_sends() -> None:
    request = parse_chat_request(chat(max_tokens=7))
    assert request.kind == "conversation"
    assert request.params == {
        "conversation_history": [USER],
        "add_generation_prompt": True,
        "enable_thinking": False,
        "max_tokens": 7,
        "grammar": None,
        "tools": [],
    }
    assert not request.stream


def test_sampling_fields_reach_the_agent() -> None:
    params = parse_chat_request(
        chat(temperature=1.2, top_p=0.5, seed=42, stop="END")
    ).params
    assert (params["temperature"], params["top_p"], params["seed"]) == (1.2, 0.5, 42)
    assert params["stop"] == ["END"]
    assert parse_chat_request(chat(stop=["a", "b"])).params["stop"] == ["a", "b"]


def test_max_completion_tokens_wins_and_chat_has_no_default_limit() -> None:
    assert (
        parse_chat_request(chat(max_tokens=5, max_completion_tokens=9)).max_tokens == 9
    )
    assert parse_chat_request(chat()).max_tokens == MAX_TOKENS_LIMIT
    completion = parse_completion_request({"model": "m", "prompt": "x"})
    assert completion.max_tokens == 16


def test_response_formats_become_grammars() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    grammar = parse_chat_request(
        chat(
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": schema, "strict": True},
            }
        )
    ).params["grammar"]
    assert grammar == {"type": "json_schema", "schema": json.dumps(schema)}
    json_object = parse_chat_request(chat(response_format={"type": "json_object"}))
    assert json_object.params["grammar"] == {
        "type": "gbnf",
        "grammar": JSON_OBJECT_GBNF,
        "root": "root",
    }
    text = parse_chat_request(chat(response_format={"type": "text"}))
    assert text.params["grammar"] is None


def test_messages_are_normalized_for_chat_templates() -> None:
    messages = [
        {"role": "developer", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "hi"}]},
        {
            "role": "assistant",
            "content": None,
            "refusal": None,
            "tool_calls": [{"id": "1", "type": "function", "function": {}}],
        },
        {"role": "tool", "content": "sunny", "tool_call_id": "1"},
    ]
    history = parse_chat_request({"model": "m", "messages": messages}).params[
        "conversation_history"
    ]
    assert history == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "hi"}]},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"id": "1", "type": "function", "function": {}}],
        },
        {"role": "tool", "content": "sunny", "tool_call_id": "1"},
    ]


def test_tools_reach_the_template_unless_tool_choice_is_none() -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    assert parse_chat_request(chat(tools=tools)).params["tools"] == tools
    assert (
        parse_chat_request(chat(tools=tools, tool_choice="none")).params["tools"] == []
    )


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"model": None}, "model"),
        ({"messages": "hi"}, "messages"),
        ({"messages": [{"role": "user"}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": 3}]}, "messages[0].content"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
            "messages[0].content[0].image_url",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]},
            "messages[0].content[0].type",
        ),
        ({"messages": [USER | {"mood": "happy"}]}, "messages[0].mood"),
        ({"temperature": "hot"}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"seed": 1.5}, "seed"),
        ({"max_tokens": True}, "max_tokens"),
        ({"stop": [""]}, "stop"),
        ({"stop": 5}, "stop"),
        ({"n": 3}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"logit_bias": {"1": 2}}, "logit_bias"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": [{"type": "function", "function": {}}]}, "tools[0].function.name"),
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
        ({"functions": []}, "functions"),
    ],
)
def test_invalid_chat_fields_are_named(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(OpenAIError) as raised:
        parse_chat_request(chat(**fields))
    assert raised.value.status == 400
    assert raised.value.param == param
    assert raised.value.body()["error"]["type"] == "invalid_request_error"


def test_neutral_values_of_unsupported_fields_are_accepted() -> None:
    parse_chat_request(
        chat(n=1, logprobs=False, presence_penalty=0, frequency_penalty=0.0, user="u")
    )


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"prompt": ["a", "b"]}, "prompt"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": [1, 2]}, "prompt"),
        ({"echo": True}, "echo"),
        ({"best_of": 2}, "best_of"),
        ({"suffix": "end"}, "suffix"),
    ],
)
def test_invalid_completion_fields_are_named(
    fields: dict[str, Any], param: str
) -> None:
    with pytest.raises(OpenAIError) as raised:
        parse_completion_request({"model": "m", "prompt": "x", **fields})
    assert raised.value.param == param


def test_completion_prompt_becomes_a_raw_prompt() -> None:
    request = parse_completion_request(
        {"model": "m", "prompt": ["Once"], "max_tokens": 3, "stream": True}
    )
    assert request.kind == "raw_prompt"
    assert request.params == {"raw_prompt": "Once", "max_tokens": 3, "grammar": None}
    assert request.stream


def test_embedding_inputs_become_an_l2_batch_keyed_by_index() -> None:
    request = parse_embedding_request({"model": "m", "input": ["a", "b"]})
    assert request.params == {
        "input_batch": [{"id": "0", "content": "a"}, {"id": "1", "content": "b"}],
        "normalization_method": "L2",
    }
    assert request.encoding_format == "float"


def item(response: Any = None, error: Any = None, final: bool = False) -> OutputItem:
    return {
        "request_id": "r",
        "response": response,
        "error": error,
        "final": final,
        "meta": None,
    }


def test_output_items_are_read_as_text_end_or_error() -> None:
    token = item({"GeneratedToken": {"ContentToken": "hi"}})
    assert read_generation_item(token) == TextPiece("hi")
    usage: Usage = {"prompt_tokens": 3, "content_tokens": 4, "cached_prompt_tokens": 1}
    done = read_generation_item(item({"GeneratedToken": {"Done": {"usage": usage}}}))
    assert done == Finished(usage)
    timeout = read_generation_item(
        item(error={"code": 504, "description": "slow"}, final=True)
    )
    assert isinstance(timeout, OpenAIError)
    assert (timeout.status, timeout.type) == (504, "server_error")
    template = read_generation_item(
        item({"GeneratedToken": {"ChatTemplateError": "bad"}}, final=True)
    )
    assert isinstance(template, OpenAIError)
    assert (template.status, template.code) == (400, "chat_template_error")


def test_finish_reason_is_length_when_every_allowed_token_was_used() -> None:
    finished = Finished({"prompt_tokens": 5, "content_tokens": 8})
    assert finished.finish_reason(8) == "length"
    assert finished.finish_reason(9) == "stop"
    assert finished.openai_usage() == {
        "prompt_tokens": 5,
        "completion_tokens": 8,
        "total_tokens": 13,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }


def test_embedding_results_come_back_in_order_and_base64_is_float32() -> None:
    results = EmbeddingResults(2)
    for index in (1, 0):
        results.add(
            item(
                {
                    "Embedding": {
                        "Embedding": {
                            "embedding": [0.5, float(index)],
                            "normalization_method": "L2",
                            "pooling_type": "Mean",
                            "source_document_id": str(index),
                        }
                    }
                }
            )
        )
    results.add(item({"Embedding": "Done"}, final=True))
    assert results.done
    body = embedding_list(results.in_order(), "m", "base64", prompt_tokens=7)
    assert [d["index"] for d in body["data"]] == [0, 1]
    assert body["usage"] == {"prompt_tokens": 7, "total_tokens": 7}
    decoded = struct.unpack("<2f", base64.b64decode(body["data"][1]["embedding"]))
    assert decoded == (0.5, 1.0)
    with pytest.raises(OpenAIError) as raised:
        EmbeddingResults(1).add(item({"Embedding": {"Error": "too long"}}))
    assert raised.value.param == "input"


def test_an_embedding_batch_missing_a_vector_is_a_502() -> None:
    results = EmbeddingResults(2)
    vector = {"embedding": [1.0], "source_document_id": "0"}
    results.add(item({"Embedding": {"Embedding": vector}}))
    with pytest.raises(OpenAIError) as raised:
        results.in_order()
    assert raised.value.status == 502
    assert "[1]" in raised.value.message


def test_chunks_share_the_reply_identity() -> None:
    reply = Reply.new("chatcmpl", "m")
    first = reply.chat_chunk({"role": "assistant", "content": ""})
    last = reply.chat_chunk({}, "stop", with_usage=True)
    assert first["id"] == last["id"]
    assert first["id"].startswith("chatcmpl-")
    assert last["choices"][0]["finish_reason"] == "stop"
    assert last["usage"] is None
    assert "usage" not in first


@pytest.mark.parametrize(
    ("source", "identifier"),
    [
        ({"LocalToAgent": "/models/gemma3-270m-q4_k_m.gguf"}, "gemma3-270m-q4_k_m"),
        (
            {
                "HuggingFace": {
                    "repo_id": "a/b",
                    "filename": "x.gguf",
                    "revision": "main",
                }
            },
            "x",
        ),
        ({"Url": {"url": "https://host/models/y.gguf"}}, "y"),
        ("None", None),
    ],
)
def test_model_ids_are_file_names(source: Any, identifier: str | None) -> None:
    assert model_id_of_source(source) == identifier
    assert model_id("/a/b/c.gguf") == "c"
