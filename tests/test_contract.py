"""The typed contract: one params shape per kind, whoever builds it, and the
readers of the agents' output items."""

from __future__ import annotations

import json

import pytest

from agents.jobs import Generation
from balancer.contract import (
    DocumentEmbedding,
    DocumentFailed,
    Done,
    EmbeddingDone,
    Failure,
    GenerationFailed,
    OutputItem,
    Progress,
    Sendable,
    Token,
    Unreadable,
    Usage,
    carries_nothing,
    content_token_item,
    content_token_text,
    document_embedding_item,
    document_failed_item,
    done_item,
    embedding_done_item,
    error_item,
    generation_failed_item,
    outcome_of,
    output_item,
    progress_item,
    read_output,
)
from balancer.events import compact_item, expand_item
from balancer.routing import request_prefix, served_prefix
from inference.envelopes import ndjson_line, paddler_envelope
from inference.openai.requests import parse_chat_request, parse_completion_request
from inference.socket_messages import SocketRequest, parse_socket_message
from inference.validation import validate_conversation, validate_raw_prompt


def item(response: object, *, final: bool = False) -> OutputItem:
    return {
        "request_id": "r",
        "response": response,  # type: ignore[typeddict-item]
        "error": None,
        "final": final,
        "meta": None,
    }


def test_the_three_producers_build_the_same_conversation_params() -> None:
    history = [{"role": "user", "content": "Hi"}]
    paddler = validate_conversation({"conversation_history": history, "max_tokens": 5})
    socket = parse_socket_message(
        '{"Request": {"id": "a", "request": {"ContinueFromConversationHistory": '
        '{"conversation_history": [{"role": "user", "content": "Hi"}], '
        '"max_tokens": 5}}}}'
    )
    openai = parse_chat_request({"model": "m", "messages": history, "max_tokens": 5})
    assert isinstance(socket, SocketRequest)
    assert socket.kind == openai.kind == "conversation"
    assert paddler == socket.params == openai.params
    # Same keys in the same order: the JSON sent to the agent is the same.
    assert list(paddler) == list(openai.params)


def test_the_three_producers_build_the_same_raw_prompt_params() -> None:
    paddler = validate_raw_prompt({"raw_prompt": "Once", "max_tokens": 3})
    socket = parse_socket_message(
        '{"Request": {"id": "a", "request": {"ContinueFromRawPrompt": '
        '{"raw_prompt": "Once", "max_tokens": 3}}}}'
    )
    openai = parse_completion_request({"model": "m", "prompt": "Once", "max_tokens": 3})
    assert isinstance(socket, SocketRequest)
    assert socket.kind == openai.kind == "raw_prompt"
    assert paddler == socket.params == openai.params
    assert list(paddler) == list(openai.params)


def test_openai_sampling_overrides_come_after_the_shared_keys() -> None:
    params = parse_completion_request(
        {"model": "m", "prompt": "Once", "temperature": 0.5, "seed": 7, "stop": "."}
    ).params
    assert list(params) == [
        "raw_prompt",
        "max_tokens",
        "grammar",
        "temperature",
        "seed",
        "stop",
    ]


def test_generation_items_are_read_as_tokens_done_or_failures() -> None:
    token = item({"GeneratedToken": {"ContentToken": "hi"}})
    assert content_token_item("r", "hi") == token
    assert read_output(token) == Token("ContentToken", "hi")
    assert content_token_text(token) == "hi"
    reasoning = item({"GeneratedToken": {"ReasoningToken": "hm"}})
    assert read_output(reasoning) == Token("ReasoningToken", "hm")
    assert content_token_text(reasoning) is None
    usage = {"prompt_tokens": 3, "content_tokens": 4}
    done = item({"GeneratedToken": {"Done": {"usage": usage}}}, final=True)
    assert read_output(done) == Done({"prompt_tokens": 3, "content_tokens": 4})
    assert outcome_of(done) == "done"
    failed = item({"GeneratedToken": {"ChatTemplateError": "bad"}}, final=True)
    assert read_output(failed) == GenerationFailed("ChatTemplateError", "bad")
    assert outcome_of(failed) == "ChatTemplateError"
    error = error_item("r", 504, "Timed out")
    assert read_output(error) == Failure(504, "Timed out")
    assert content_token_text(error) is None
    assert outcome_of(error) == "504"
    assert read_output(item(None)) == Unreadable(None)
    assert outcome_of(item({"Something": 1}, final=True)) == "error"


def test_embedding_items_are_read_as_vectors_errors_or_done() -> None:
    vector = item(
        {
            "Embedding": {
                "Embedding": {
                    "embedding": [0.5, 0.5],
                    "normalization_method": "L2",
                    "pooling_type": "Mean",
                    "source_document_id": "3",
                }
            }
        }
    )
    assert read_output(vector) == DocumentEmbedding("3", [0.5, 0.5], "L2", "Mean")
    failed = item({"Embedding": {"Error": "document 3 is empty"}})
    assert read_output(failed) == DocumentFailed("document 3 is empty")
    done = embedding_done_item("r")
    assert done["response"] == {"Embedding": "Done"}
    assert read_output(done) == EmbeddingDone()
    assert outcome_of(done) == "done"


USAGE: Usage = {
    "prompt_tokens": 5,
    "cached_prompt_tokens": 2,
    "input_image_tokens": 0,
    "input_audio_tokens": 0,
    "content_tokens": 3,
    "reasoning_tokens": 0,
    "tool_call_tokens": 0,
    "undeterminable_tokens": 0,
}


def test_each_constructor_builds_paddlers_exact_response_shape() -> None:
    # PROTOCOL.md's stream lines, as the agent sends their payloads.
    assert done_item("r", USAGE, slot=1) == {
        "request_id": "r",
        "response": {"GeneratedToken": {"Done": {"usage": USAGE}}},
        "error": None,
        "final": True,
        "meta": {"slot": 1},
    }
    assert generation_failed_item("r", "GrammarSyntaxError", "bad rule") == {
        "request_id": "r",
        "response": {"GeneratedToken": {"GrammarSyntaxError": "bad rule"}},
        "error": None,
        "final": True,
        "meta": None,
    }
    assert document_embedding_item(
        "r",
        source_document_id="7",
        embedding=[0.6, 0.8],
        normalization_method={"RmsNorm": {"epsilon": 1e-6}},
        pooling_type="Mean",
    ) == {
        "request_id": "r",
        "response": {
            "Embedding": {
                "Embedding": {
                    "embedding": [0.6, 0.8],
                    "normalization_method": {"RmsNorm": {"epsilon": 1e-6}},
                    "pooling_type": "Mean",
                    "source_document_id": "7",
                }
            }
        },
        "error": None,
        "final": False,
        "meta": None,
    }
    assert document_failed_item("r", "document 7 is empty") == {
        "request_id": "r",
        "response": {"Embedding": {"Error": "document 7 is empty"}},
        "error": None,
        "final": False,
        "meta": None,
    }
    assert embedding_done_item("r", prompt_tokens=9) == {
        "request_id": "r",
        "response": {"Embedding": "Done"},
        "error": None,
        "final": True,
        "meta": {"prompt_tokens": 9},
    }
    assert error_item("r", 503, "agent is shutting down") == {
        "request_id": "r",
        "response": None,
        "error": {"code": 503, "description": "agent is shutting down"},
        "final": True,
        "meta": None,
    }
    assert progress_item("r", 512) == {
        "request_id": "r",
        "response": None,
        "error": None,
        "final": False,
        "meta": {"evaluated_prompt_tokens": 512},
    }


def test_the_hot_path_token_is_the_conversion_of_a_content_token() -> None:
    assert content_token_item("r", "hi") == output_item(
        "r", Token("ContentToken", "hi")
    )
    assert content_token_item("r", "hi", slot=2) == output_item(
        "r", Token("ContentToken", "hi"), {"slot": 2}
    )


@pytest.mark.parametrize(
    ("output", "final"),
    [
        (Token("ContentToken", "hi"), False),
        (Token("ReasoningToken", "hm"), False),
        (Token("ToolCallToken", "{"), False),
        (Token("UndeterminableToken", "?"), False),
        (Done(USAGE), True),
        (GenerationFailed("ChatTemplateError", "no such filter"), True),
        (GenerationFailed("GrammarInitializationFailed", "x"), True),
        (GenerationFailed("GrammarRejectedModelOutput", "x"), True),
        (GenerationFailed("GrammarIncompatibleWithThinking", "x"), True),
        (GenerationFailed("ImageDecodingFailed", "x"), True),
        (GenerationFailed("MultimodalNotSupported", "x"), True),
        (GenerationFailed("SamplerError", "x"), True),
        (Failure(413, "the prompt is too long"), True),
        (DocumentEmbedding("0", [1.0, 0.0], "L2", "Last"), False),
        (DocumentFailed("document 0 is empty"), False),
        (EmbeddingDone(), True),
        (Progress(128), False),
    ],
)
def test_every_output_reads_back_as_itself(output: Sendable, final: bool) -> None:
    item = output_item("r", output)
    assert read_output(item) == output
    assert item["final"] is final
    # The same after the trip through Redis (compacted, JSON, expanded).
    assert read_output(expand_item(json.loads(json.dumps(compact_item(item))))) == (
        output
    )


def test_only_a_progress_item_carries_nothing_for_the_client() -> None:
    assert carries_nothing(progress_item("r", 64))
    assert not carries_nothing(content_token_item("r", ""))
    assert not carries_nothing(error_item("r", 500, "x"))
    assert not carries_nothing(embedding_done_item("r"))


def test_a_variant_the_contract_does_not_know_is_unreadable() -> None:
    unknown = item({"GeneratedToken": {"Surprise": "x"}}, final=True)
    assert read_output(unknown) == Unreadable({"GeneratedToken": {"Surprise": "x"}})
    assert outcome_of(unknown) == "error"


def test_envelopes_wrap_items_in_paddlers_stream_lines() -> None:
    done = done_item("r", USAGE, slot=0)
    done["meta"] = None  # the stream strips it before a client sees the item
    assert json.loads(ndjson_line(done, "agent-1")) == {
        "Response": {
            "generated_by": "agent-1",
            "request_id": "r",
            "response": {"GeneratedToken": {"Done": {"usage": USAGE}}},
        }
    }
    assert paddler_envelope(error_item("r", 504, "Timed out"), "agent-1") == {
        "Error": {"request_id": "r", "error": {"code": 504, "description": "Timed out"}}
    }
    assert json.loads(ndjson_line(content_token_item("r", "é\n"), "a")) == {
        "Response": {
            "generated_by": "a",
            "request_id": "r",
            "response": {"GeneratedToken": {"ContentToken": "é\n"}},
        }
    }


def test_routing_hashes_the_web_tiers_params_as_the_agent_hashes_its_job() -> None:
    history = [{"role": "user", "content": "Hi"}]
    params = validate_conversation({"conversation_history": history, "max_tokens": 5})
    job = Generation(
        request_id="r",
        max_tokens=5,
        conversation=history,
        original_conversation=history,
    )
    assert request_prefix(params) == request_prefix(job.prefix_params())
    assert len(request_prefix(params)) == 1
    assert served_prefix(params, "Hello") == served_prefix(job.prefix_params(), "Hello")
    prompt = validate_raw_prompt({"raw_prompt": "x" * 600, "max_tokens": 1})
    raw_job = Generation(request_id="r", max_tokens=1, raw_prompt="x" * 600)
    assert request_prefix(prompt) == request_prefix(raw_job.prefix_params())
    assert len(request_prefix(prompt)) == 2
    assert (
        request_prefix(
            {"input_batch": [{"id": "0", "content": "x"}], "normalization_method": "L2"}
        )
        == []
    )
