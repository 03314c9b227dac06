"""The typed contract: one params shape per kind, whoever builds it, and the
readers of the agents' output items."""

from __future__ import annotations

from balancer.contract import (
    DocumentEmbedding,
    DocumentFailed,
    Done,
    EmbeddingDone,
    Failure,
    GenerationFailed,
    OutputItem,
    Token,
    Unreadable,
    content_token_item,
    content_token_text,
    embedding_done_item,
    error_item,
    outcome_of,
    read_output,
)
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
    assert read_output(vector) == DocumentEmbedding("3", [0.5, 0.5])
    failed = item({"Embedding": {"Error": "document 3 is empty"}})
    assert read_output(failed) == DocumentFailed("document 3 is empty")
    done = embedding_done_item("r")
    assert done["response"] == {"Embedding": "Done"}
    assert read_output(done) == EmbeddingDone()
    assert outcome_of(done) == "done"
